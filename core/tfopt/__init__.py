"""tfopt: a transformer-model optimizer for ONNX Runtime, as a thin pluggy host.

Public API: :data:`hookimpl` and :class:`PluginOption` for plugin authors, :func:`optimize_model`
for users of ONNX Runtime's ``onnxruntime.transformers.optimizer`` API.
"""

from .errors import TfoptError
from .hookspecs import hookimpl
from .plugin_options import PluginOption

__version__ = "0.1.0"


def optimize_model(*args, **kwargs):
    """ONNX Runtime-compatible entry point; see :func:`tfopt.optimizer.optimize_model`."""
    from .optimizer import optimize_model as _optimize_model

    return _optimize_model(*args, **kwargs)


__all__ = ["PluginOption", "TfoptError", "hookimpl", "optimize_model", "__version__"]
