"""A plugin module whose import fails, as when a plugin's own dependency is missing."""

raise ImportError("simulated: this plugin needs a package that is not installed")
