"""Teach tf2onnx TF's ``Erfc``: TF >= 2.16 writes exact gelu as ``0.5 * x * erfc(-x / sqrt(2))``.

tf2onnx 1.17 has no handler for it and leaves an ``Erfc`` node that ONNX Runtime
refuses. ONNX has ``Erf`` (opset 9+) and erfc(x) = 1 - erf(x): the node becomes
``Sub(1, Erf(x))``, keeping its name and output so nothing downstream changes.
"""

from __future__ import annotations

import numpy as np

_registered = False


def register_erfc_handler() -> None:
    """Register the handler once per process (tf2onnx's handler registry is global)."""
    global _registered
    if _registered:
        return
    from tf2onnx import utils
    from tf2onnx.handler import tf_op

    @tf_op("Erfc")
    class ErfcAsOneMinusErf:  # noqa: F841 - registered by the decorator
        @classmethod
        def version_9(cls, ctx, node, **kwargs):
            x = node.input[0]
            dtype = utils.map_onnx_to_numpy_type(ctx.get_dtype(x))
            erf = ctx.make_node("Erf", [x], op_name_scope=node.name)
            one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype))
            ctx.replace_inputs(node, [one.output[0], erf.output[0]])
            node.type = "Sub"

    _registered = True
