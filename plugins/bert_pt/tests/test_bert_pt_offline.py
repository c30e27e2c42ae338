"""A --model that is no directory and no built-in name fails at once when the hub cannot be reached."""

from __future__ import annotations

import socket
import time

import pytest
from click.testing import CliRunner

from tfopt import hub
from tfopt.cli import main
from tfopt.errors import TfoptError
from tfopt_bert_pt.models import TINY_CONFIGS, load_source


@pytest.fixture
def unreachable_hub(monkeypatch):
    """Offline mode off (the conftest turns it on), and the hub endpoint a port that refuses connections."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HTTPS_PROXY", raising=False)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.setattr(hub, "hub_offline", lambda: False)
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{unused.getsockname()[1]}")
        yield


def test_unknown_name_with_the_hub_unreachable_fails_in_seconds(unreachable_hub):
    start = time.perf_counter()
    with pytest.raises(TfoptError) as error:
        load_source("nosuch-org/nosuch-model")
    assert time.perf_counter() - start < 5
    assert str(error.value) == (
        f"nosuch-org/nosuch-model: not a directory, not a built-in name ({', '.join(TINY_CONFIGS)}), "
        "and the Hugging Face hub is not reachable (nor is nosuch-org/nosuch-model in the local hub cache)"
    )


def test_the_cli_says_so_in_one_line_at_once(unreachable_hub, tmp_path):
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["run", "--plugin", "bert_pt", "--model", "nosuch", "--output", str(tmp_path / "out")])
    seconds = time.perf_counter() - start
    assert result.exit_code == 2 and seconds < 5, (seconds, result.output)
    assert result.stderr.strip().splitlines()[-1].startswith(
        "tfopt: error: nosuch: not a directory, not a built-in name (tiny-bert, "
    )
    assert not (tmp_path / "out").exists()
