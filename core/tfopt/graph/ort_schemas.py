"""Which ops ONNX Runtime registers, by its own schemas: the authority where onnx's differ.

ONNX Runtime registers ops in the default ONNX domain that onnx has no schema for:
``SimplifiedLayerNormalization`` (any opset) and ``LayerNormalization`` below opset 17 (onnx's
own starts at 17). ``onnx.checker`` refuses them ("No Op registered for ..."), ONNX Runtime
loads and runs them. Whether such an op is valid is ONNX Runtime's call:
:func:`ort_registers` asks its schemas (``get_all_operator_schema``, ONNX Runtime 1.32:
883 schemas, read once in ~0.1 s). Imports only onnxruntime, lazily.
"""

from __future__ import annotations

import functools

DEFAULT_DOMAIN_ALIAS = "ai.onnx"


def ort_registers(op_type: str, domain: str, version: int) -> bool | None:
    """Whether ONNX Runtime has a schema for ``domain::op_type`` at opset ``version`` of that
    domain (a schema that starts at or before it); None when ONNX Runtime's schemas cannot be read.
    ``domain`` "" and "ai.onnx" are the default domain."""
    schemas = ort_schema_versions()
    if schemas is None:
        return None
    domain = "" if domain == DEFAULT_DOMAIN_ALIAS else domain
    return any(since <= version for since in schemas.get((domain, op_type), ()))


def ort_schema(op_type: str, domain: str, version: int):
    """ONNX Runtime's schema of ``domain::op_type`` in force at opset ``version`` (the newest that
    starts at or before it: its inputs, outputs and type constraints), or None."""
    schemas = _ort_schemas()
    domain = "" if domain == DEFAULT_DOMAIN_ALIAS else domain
    candidates = [s for s in (schemas or {}).get((domain, op_type), ()) if int(s.since_version) <= version]
    return max(candidates, key=lambda s: int(s.since_version)) if candidates else None


@functools.lru_cache(maxsize=1)
def ort_schema_versions() -> dict[tuple[str, str], tuple[int, ...]] | None:
    """(domain, op) -> the opset versions ONNX Runtime's schemas start at (contrib ops included);
    None when ONNX Runtime is not installed or has no schema API."""
    schemas = _ort_schemas()
    if schemas is None:
        return None
    return {key: tuple(sorted(int(s.since_version) for s in group)) for key, group in schemas.items()}


@functools.lru_cache(maxsize=1)
def _ort_schemas() -> dict[tuple[str, str], list] | None:
    """(domain, op) -> ONNX Runtime's schemas of it, read once; None without ONNX Runtime's schema API."""
    try:
        from onnxruntime.capi.onnxruntime_pybind11_state import get_all_operator_schema

        schemas = get_all_operator_schema()
    except Exception:  # ImportError, or a build without the schema API
        return None
    found: dict[tuple[str, str], list] = {}
    for schema in schemas:
        domain = "" if schema.domain == DEFAULT_DOMAIN_ALIAS else schema.domain
        found.setdefault((domain, schema.name), []).append(schema)
    return found
