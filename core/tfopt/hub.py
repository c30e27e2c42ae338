"""Telling a Hugging Face hub id from a local path, and whether the hub may be asked at all.

Shared by the PyTorch adapters; nothing here imports huggingface_hub until it is called.
Asking an unreachable hub costs ~20 s of retries inside huggingface_hub before it gives
up, so :func:`hub_reachable` first tries one TCP connection with a short deadline.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import urllib.parse
from typing import Callable, Iterable, TypeVar

from .errors import TfoptError

T = TypeVar("T")

DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_SECONDS = 3.0

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def looks_like_hub_id(source: str) -> bool:
    """``org/name`` or ``name``, and not a model file name."""
    return bool(_HUB_ID.match(source)) and not source.endswith((".onnx", ".json"))


def hub_offline() -> bool:
    """True when Hugging Face's offline switch is on (checked at call time, not at import)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return True
    try:
        from huggingface_hub import is_offline_mode
    except ImportError:
        return False
    return is_offline_mode()


def _probe_address() -> tuple[str, int]:
    """(host, port) a download would connect to first: the HTTPS proxy when one is set, else the hub endpoint."""
    endpoint = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT)
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    no_proxy = [entry.strip() for entry in (os.environ.get("NO_PROXY") or os.environ.get("no_proxy") or "").split(",")]
    if proxy and not any(entry and (entry == "*" or (endpoint.hostname or "").endswith(entry.lstrip("."))) for entry in no_proxy):
        target = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        return target.hostname or "", target.port or 80
    return endpoint.hostname or "", endpoint.port or (80 if endpoint.scheme == "http" else 443)


def hub_reachable(timeout: float = PROBE_TIMEOUT_SECONDS) -> bool:
    """False when offline mode is on, or the hub (or the proxy) takes no connection within ``timeout`` s.

    The name lookup has no timeout of its own, so the probe runs in a thread that is
    abandoned at the deadline.
    """
    if hub_offline():
        return False
    host, port = _probe_address()
    outcome: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                outcome.append(True)
        except (OSError, ValueError):
            outcome.append(False)

    thread = threading.Thread(target=probe, name="tfopt-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(outcome) and outcome[0]


def unreachable_hub_error(name: str, builtin_names: Iterable[str]) -> TfoptError:
    """The one-line error for a ``--model`` that is no directory, no built-in name, and cannot be downloaded."""
    why = "is offline (HF_HUB_OFFLINE is set)" if hub_offline() else "is not reachable"
    return TfoptError(
        f"{name}: not a directory, not a built-in name ({', '.join(builtin_names)}), "
        f"and the Hugging Face hub {why} (nor is {name} in the local hub cache)"
    )


def read_local_config(path: os.PathLike | str):
    """The ``transformers`` config of a local Hugging Face model directory, or a one-line refusal.

    Checked in the order a user's mistake shows: not a directory, unreadable, no config.json,
    a config.json transformers cannot read (bad JSON, an unknown model type). Read before any
    weight is loaded, so an adapter refuses a model type it does not handle at once.
    """
    from pathlib import Path

    from .errors import first_line

    path = Path(path)
    if not path.is_dir():
        raise TfoptError(f"{path}: not a directory (expected a Hugging Face model directory)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise TfoptError(f"{path}: model directory is not readable")
    if not (path / "config.json").is_file():
        raise TfoptError(f"{path}: no config.json, not a Hugging Face model directory")
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # bad JSON, unknown model_type, unreadable file
        raise TfoptError(f"{path}: cannot read config.json ({first_line(exc)})") from None


def load_from_hub(repo_id: str, builtin_names: Iterable[str], load: Callable[[bool], T]) -> T:
    """``load(cached_only)`` against the hub, its failures as one line.

    The hub is probed first (:func:`hub_reachable`): unreachable, ``load`` reads the local cache
    only (``local_files_only=True``) instead of waiting through huggingface_hub's retries, and a
    copy that is not cached is :func:`unreachable_hub_error`. An adapter's own :class:`TfoptError`
    (a model type it does not handle) passes through as it is.
    """
    from .errors import first_line

    cached_only = not hub_reachable()
    try:
        return load(cached_only)
    except TfoptError:
        raise
    except Exception as exc:  # not in the cache, unknown repo, gated model, no network
        if cached_only:
            raise unreachable_hub_error(repo_id, builtin_names) from None
        raise TfoptError(f"{repo_id}: cannot load from the Hugging Face hub ({first_line(exc)})") from None
