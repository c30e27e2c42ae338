"""Finding, loading and choosing plugins.

Plugins come from the entry-point group ``tfopt`` (one per model family, plus any
extensions) and from :data:`DEFAULT_PLUGINS`, the built-in generic stages, which
are always registered. Each entry point is loaded on its own, so a plugin that fails
to import is recorded with its error and the rest keep working.

Each deployment chooses which installed plugins are active:

- ``TFOPT_PLUGINS=bert_pt,gpt2``: an allow-list of entry-point plugins (set but empty
  means none);
- ``tfopt -p no:NAME``: block one plugin by name (repeatable);
- ``tfopt.toml`` in the working directory, or the file named by ``TFOPT_CONFIG``::

      [plugins]
      allow = ["bert_pt"]     # same meaning as TFOPT_PLUGINS, which wins when set
      block = ["gpt2"]        # added to the -p no:NAME blocks

Blocked or not-allowed plugins are never imported.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import pluggy

from . import hookspecs
from .errors import TfoptError
from .plugin_options import PluginOption, declaration_problem, declared_options

ENTRY_POINT_GROUP = "tfopt"
ALLOW_ENV = "TFOPT_PLUGINS"
CONFIG_ENV = "TFOPT_CONFIG"
CONFIG_FILE = "tfopt.toml"
BLOCK_PREFIX = "no:"

# Built-in plugins: name -> module. Registered in every run, like any third-party plugin.
DEFAULT_PLUGINS = {"default": "tfopt.default_plugin"}


@dataclass
class PluginRecord:
    """What tfopt knows about one plugin, including those it did not load and why."""

    name: str
    distribution: str | None = None
    version: str | None = None
    status: str = "active"  # "active", "failed", "blocked", "not allowed"
    reason: str = ""  # where a block or the allow-list came from
    error: str | None = None  # one line: why the plugin could not be loaded


@dataclass
class Selection:
    """Which entry-point plugins a deployment wants: ``allow`` None means all."""

    allow: frozenset[str] | None = None
    allow_source: str = ""
    blocked: dict[str, str] = field(default_factory=dict)  # name -> where it was blocked

    def refusal(self, name: str) -> tuple[str, str] | None:
        """(status, reason) when ``name`` must not be loaded, else None."""
        if name in self.blocked:
            return "blocked", self.blocked[name]
        if self.allow is not None and name not in self.allow:
            return "not allowed", f"not in {self.allow_source}"
        return None


class TfoptPluginManager(pluggy.PluginManager):
    """A pluggy PluginManager that also remembers plugins it did not load, and why."""

    def __init__(self) -> None:
        super().__init__(ENTRY_POINT_GROUP)
        self.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self.warnings: list[str] = []  # one line each, e.g. an allow-list naming a plugin that is not installed


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """``Type: message`` with the message's lines joined, for one-line listings."""
    text = "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def parse_block_options(values: Iterable[str]) -> list[str]:
    """``["no:gpt2", ...]`` -> ``["gpt2", ...]``; anything else is a usage error."""
    names = []
    for value in values:
        if not value.startswith(BLOCK_PREFIX) or not value[len(BLOCK_PREFIX):].strip():
            raise TfoptError(f"-p expects no:NAME to block a plugin, got {value!r}")
        names.append(value[len(BLOCK_PREFIX):].strip())
    return names


def _string_list(value: Any, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise TfoptError(f"{where} must be a list of plugin names")
    return value


def read_config(environ: Mapping[str, str] | None = None, cwd: str | os.PathLike | None = None) -> dict[str, Any]:
    """The ``[plugins]`` table of the config file: ``{"path", "allow", "block"}``.

    ``TFOPT_CONFIG`` names the file (it must exist); otherwise ``tfopt.toml`` in
    ``cwd`` is used when present. Unknown keys are errors: a typo must not silently
    leave a plugin active.
    """
    environ = os.environ if environ is None else environ
    explicit = environ.get(CONFIG_ENV)
    path = Path(explicit) if explicit else Path(cwd or os.getcwd()) / CONFIG_FILE
    if not path.is_file():
        if explicit:
            raise TfoptError(f"{path}: config file named by {CONFIG_ENV} does not exist")
        return {"path": None, "allow": None, "block": []}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, OSError) as exc:
        raise TfoptError(f"{path}: cannot read config ({_one_line(exc)})") from None
    table = data.get("plugins", {})
    if not isinstance(table, dict):
        raise TfoptError(f"{path}: [plugins] must be a table")
    unknown = set(table) - {"allow", "block"}
    if unknown:
        raise TfoptError(f"{path}: unknown key(s) in [plugins]: {', '.join(sorted(unknown))} (known: allow, block)")
    allow = table.get("allow")
    return {
        "path": path,
        "allow": None if allow is None else _string_list(allow, f"{path}: plugins.allow"),
        "block": _string_list(table.get("block", []), f"{path}: plugins.block"),
    }


def selection_from(
    blocked: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
) -> Selection:
    """Combine the env allow-list, the config file and command-line blocks into one Selection."""
    environ = os.environ if environ is None else environ
    config = read_config(environ, cwd)
    selection = Selection()
    if ALLOW_ENV in environ:
        names = [name.strip() for name in environ[ALLOW_ENV].split(",")]
        selection.allow = frozenset(name for name in names if name)
        selection.allow_source = ALLOW_ENV
    elif config["allow"] is not None:
        selection.allow = frozenset(config["allow"])
        selection.allow_source = f"plugins.allow of {config['path']}"
    for name in config["block"]:
        selection.blocked[name] = f"blocked in {config['path']}"
    for name in blocked:
        selection.blocked[name] = f"blocked by -p {BLOCK_PREFIX}{name}"
    builtin = sorted(set(selection.blocked) & set(DEFAULT_PLUGINS))
    if builtin:
        raise TfoptError(f"the built-in plugin {builtin[0]!r} cannot be blocked; an adapter overrides it instead")
    return selection


def discover_entry_points() -> list[importlib.metadata.EntryPoint]:
    """Entry points of group ``tfopt``, one per name (first wins, as on sys.path)."""
    seen: dict[str, importlib.metadata.EntryPoint] = {}
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        seen.setdefault(entry_point.name, entry_point)
    return sorted(seen.values(), key=lambda ep: ep.name)


def _unknown_hooks(pm: pluggy.PluginManager, plugin: object) -> list[str]:
    """Hook names the plugin implements that no spec declares (a typo such as ``fuze``)."""
    return sorted(
        caller.name
        for caller in pm.get_hookcallers(plugin) or []
        if not caller.has_spec() and not all(impl.optionalhook for impl in caller.get_hookimpls())
    )


def register_plugin(pm: TfoptPluginManager, plugin: object, name: str, record: PluginRecord | None = None) -> bool:
    """Register ``plugin``, recording (not raising) a failure; True when it is active."""
    record = record or PluginRecord(name=name)
    pm.records.setdefault(name, record)
    if pm.is_blocked(name):
        return False  # the existing record says why (blocked / not allowed)
    pm.records[name] = record
    try:
        pm.register(plugin, name=name)
    except Exception as exc:  # pluggy's validation errors, a duplicate name
        record.status, record.error = "failed", _one_line(exc)
        return False
    unknown = _unknown_hooks(pm, plugin)
    if unknown:
        pm.unregister(plugin)
        record.status = "failed"
        record.error = f"implements unknown hook(s) {', '.join(unknown)} (known: {', '.join(hookspecs.HOOK_NAMES)})"
        return False
    is_adapter = any(impl.plugin is plugin and _is_real_impl(impl) for impl in pm.hook.export.get_hookimpls())
    problem = declaration_problem(plugin, is_adapter=is_adapter)
    if problem:  # refused now, not when a run parses its flags
        pm.unregister(plugin)
        record.status, record.error = "failed", problem
        return False
    return True


def build_plugin_manager(
    *,
    blocked: Iterable[str] = (),
    environ: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> TfoptPluginManager:
    """A plugin manager with the built-ins plus every selected entry-point plugin that loads.

    ``entry_points`` defaults to :func:`discover_entry_points`; tests pass their own.
    """
    selection = selection_from(blocked, environ, cwd)
    pm = TfoptPluginManager()
    entry_points = list(discover_entry_points() if entry_points is None else entry_points)
    unknown = allowed_but_not_installed(selection, entry_points)
    if unknown:
        pm.warnings.append(unknown)
    for name, module_name in DEFAULT_PLUGINS.items():
        register_plugin(pm, importlib.import_module(module_name), name, PluginRecord(name=name, distribution="tfopt"))
        pm.records[name].version = _tfopt_version()
    for entry_point in entry_points:
        dist = getattr(entry_point, "dist", None)
        record = PluginRecord(
            name=entry_point.name,
            distribution=dist.name if dist is not None else None,
            version=dist.version if dist is not None else None,
        )
        if record.name in pm.records:
            record.status, record.error = "failed", f"name {record.name!r} is already taken by another plugin"
            pm.records.setdefault(f"{record.name} ({entry_point.value})", record)
            continue
        refusal = selection.refusal(entry_point.name)
        if refusal is not None:
            record.status, record.reason = refusal
            pm.records[record.name] = record
            pm.set_blocked(record.name)
            continue
        try:
            plugin = entry_point.load()
        except BaseException as exc:  # an import may raise anything, even SystemExit
            if isinstance(exc, KeyboardInterrupt):
                raise
            record.status, record.error = "failed", _one_line(exc)
            pm.records[record.name] = record
            continue
        register_plugin(pm, plugin, record.name, record)
    return pm


def allowed_but_not_installed(selection: Selection, entry_points: Iterable[importlib.metadata.EntryPoint]) -> str | None:
    """One warning line when the allow-list names plugins no entry point provides (a typo, a missing install)."""
    if selection.allow is None:
        return None
    installed = sorted({entry_point.name for entry_point in entry_points})
    missing = sorted(selection.allow - set(installed) - set(DEFAULT_PLUGINS))
    if not missing:
        return None
    names = ", ".join(repr(name) for name in missing)
    verb = "is" if len(missing) == 1 else "are"
    return (
        f"{selection.allow_source} names {names}, which {verb} not installed"
        f" (installed plugins: {', '.join(installed) or 'none'})"
    )


def _tfopt_version() -> str:
    from . import __version__

    return __version__


def active_plugin_names(pm: pluggy.PluginManager) -> list[str]:
    """Names of registered plugins (pluggy also lists blocked names, with no plugin)."""
    return [name for name, plugin in pm.list_name_plugin() if plugin is not None]


def _is_real_impl(impl: pluggy.HookImpl) -> bool:
    return not (impl.wrapper or impl.hookwrapper)


def implemented_hooks(pm: pluggy.PluginManager, name: str) -> list[str]:
    """The tfopt hooks plugin ``name`` implements, in pipeline order."""
    plugin = pm.get_plugin(name)
    if plugin is None:
        return []
    have = {caller.name for caller in pm.get_hookcallers(plugin) or []}
    return [hook for hook in hookspecs.HOOK_NAMES if hook in have]


def adapter_names(pm: pluggy.PluginManager) -> list[str]:
    """Plugins that implement ``export`` (not as a wrapper): one per model family."""
    return sorted({impl.plugin_name for impl in pm.hook.export.get_hookimpls() if _is_real_impl(impl)})


def _installed_line(pm: pluggy.PluginManager) -> str:
    names = adapter_names(pm)
    return f"installed adapters: {', '.join(names)}" if names else "no adapter is installed and active"


def check_adapter_name(pm: pluggy.PluginManager, name: str) -> None:
    """Raise a one-line TfoptError unless ``name`` is an active adapter; say why it is not."""
    if name in adapter_names(pm):
        return
    record = getattr(pm, "records", {}).get(name)
    if record is not None and record.status == "failed":
        raise TfoptError(f"plugin {name!r} failed to load ({record.error}); {_installed_line(pm)}")
    if record is not None and record.status != "active":
        raise TfoptError(f"plugin {name!r} is {record.status} ({record.reason}); {_installed_line(pm)}")
    if pm.get_plugin(name) is not None:
        raise TfoptError(f"plugin {name!r} is not an adapter (it does not implement export); {_installed_line(pm)}")
    raise TfoptError(f"unknown plugin {name!r}; {_installed_line(pm)}")


def adapter_options(pm: pluggy.PluginManager, name: str) -> tuple[PluginOption, ...]:
    """The options adapter ``name`` declares (``tfopt_options``); empty when it is no active adapter."""
    return declared_options(pm.get_plugin(name)) if name in adapter_names(pm) else ()


def adapter_caller(pm: pluggy.PluginManager, name: str, hook: str):
    """Call ``hook`` on adapter ``name`` plus every extension (default plugin, wrappers).

    Every other adapter is left out, so ``tfopt run --plugin bert_pt`` never runs
    GPT-2's hooks, while a timing wrapper still wraps each stage.
    """
    check_adapter_name(pm, name)
    others = [pm.get_plugin(other) for other in adapter_names(pm) if other != name]
    return pm.subset_hook_caller(hook, remove_plugins=others)


def generic_caller(pm: pluggy.PluginManager, hook: str):
    """Call ``hook`` without any adapter: the built-in generic stages and the extensions."""
    adapters = [pm.get_plugin(name) for name in adapter_names(pm)]
    return pm.subset_hook_caller(hook, remove_plugins=adapters)


def list_plugins(pm: TfoptPluginManager | None = None) -> list[dict[str, Any]]:
    """One entry per known plugin: name, distribution, version, hooks, is_adapter, status, error.

    Includes plugins registered in-process (no entry point) and those that were
    blocked, not allowed or failed to load.
    """
    pm = build_plugin_manager() if pm is None else pm
    records: dict[str, PluginRecord] = dict(getattr(pm, "records", {}))
    for name in active_plugin_names(pm):
        records.setdefault(name, PluginRecord(name=name))
    adapters = set(adapter_names(pm))
    listing = []
    for name in sorted(records, key=lambda n: (n not in DEFAULT_PLUGINS, n)):
        record = records[name]
        active = record.status == "active" and pm.get_plugin(name) is not None
        listing.append(
            {
                "name": record.name,
                "distribution": record.distribution,
                "version": record.version,
                "hooks": implemented_hooks(pm, name) if active else [],
                "is_adapter": name in adapters,
                "builtin": name in DEFAULT_PLUGINS,
                "status": record.status if active or record.status != "active" else "unregistered",
                "reason": record.reason or None,
                "error": record.error,
            }
        )
    return listing
