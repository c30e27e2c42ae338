"""The hub probe: an unreachable hub is known within seconds, not after huggingface_hub's retries."""

from __future__ import annotations

import socket
import time

import pytest

from tfopt import hub
from tfopt.errors import TfoptError


@pytest.fixture
def online_mode(monkeypatch):
    """Offline mode off, whatever the test session set (the adapters' conftests set HF_HUB_OFFLINE=1)."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setattr(hub, "hub_offline", lambda: False)


def test_a_closed_port_is_unreachable_at_once(online_mode, monkeypatch):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]  # bound, never listening: connections are refused
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
        start = time.perf_counter()
        assert hub.hub_reachable() is False
    assert time.perf_counter() - start < 2


def test_a_listening_endpoint_is_reachable(online_mode, monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub.hub_reachable() is True
        monkeypatch.setattr(hub, "hub_offline", lambda: True)
        assert hub.hub_reachable() is False  # offline mode wins without any connection


def test_a_hanging_lookup_is_abandoned_at_the_deadline(online_mode, monkeypatch):
    def hangs(address, timeout=None):
        time.sleep(30)  # a resolver that never answers: getaddrinfo has no timeout
        raise OSError("no answer")  # as a lookup that finally gives up would (the thread outlives the test)

    monkeypatch.setattr(hub.socket, "create_connection", hangs)
    start = time.perf_counter()
    assert hub.hub_reachable(timeout=0.5) is False
    assert time.perf_counter() - start < 1.5


def test_the_probe_goes_to_the_proxy_when_one_is_set(online_mode, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "https://hub.example:8443")
    assert hub._probe_address() == ("hub.example", 8443)
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    assert hub._probe_address() == ("proxy.corp", 3128)
    monkeypatch.setenv("NO_PROXY", ".example")
    assert hub._probe_address() == ("hub.example", 8443)


def test_the_error_names_the_builtins_and_why(monkeypatch):
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    assert str(hub.unreachable_hub_error("nosuch", ["tiny-a", "tiny-b"])) == (
        "nosuch: not a directory, not a built-in name (tiny-a, tiny-b), and the Hugging Face hub is not reachable"
        " (nor is nosuch in the local hub cache)"
    )
    monkeypatch.setattr(hub, "hub_offline", lambda: True)
    assert "the Hugging Face hub is offline (HF_HUB_OFFLINE is set)" in str(hub.unreachable_hub_error("x", ["y"]))


def test_a_local_directory_is_refused_in_one_line_before_any_weight_is_read(tmp_path):
    pytest.importorskip("transformers")
    from tfopt.hub import read_local_config

    with pytest.raises(TfoptError, match="not a directory"):
        read_local_config(tmp_path / "missing")
    with pytest.raises(TfoptError, match="no config.json, not a Hugging Face model directory"):
        read_local_config(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(TfoptError, match="cannot read config.json"):
        read_local_config(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "bert", "hidden_size": 32}')
    assert read_local_config(tmp_path).hidden_size == 32


def test_a_hub_load_reads_the_cache_only_when_the_hub_is_unreachable_and_fails_in_one_line(monkeypatch):
    seen = []

    def load(cached_only):
        seen.append(cached_only)
        raise OSError("not in the cache")

    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    with pytest.raises(TfoptError, match="is not reachable") as unreachable:
        hub.load_from_hub("org/model", ["tiny-a"], load)
    assert seen == [True] and "tiny-a" in str(unreachable.value)
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)
    with pytest.raises(TfoptError, match=r"^org/model: cannot load from the Hugging Face hub \(not in the cache\)$"):
        hub.load_from_hub("org/model", ["tiny-a"], load)
    assert seen == [True, False]

    def refuses(cached_only):
        raise TfoptError("org/model: model type 'x' is not handled")

    with pytest.raises(TfoptError, match="model type 'x' is not handled"):  # the adapter's own line passes through
        hub.load_from_hub("org/model", [], refuses)
    assert hub.load_from_hub("org/model", [], lambda cached_only: "model") == "model"
