"""Quiet by default: the libraries a run drives print nothing of their own unless `tfopt -v`."""

from __future__ import annotations

import importlib.util
import logging
import subprocess
import sys
import textwrap
import warnings

import pytest

from tfopt.console import is_verbose, third_party_output


def _tfopt(*args, cwd, timeout=600):
    return subprocess.run([sys.executable, "-m", "tfopt", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def _foreign_lines(stderr: str) -> list[str]:
    """stderr lines tfopt did not print itself (its own all start with "tfopt: " or "tfopt PASSED/FAILED")."""
    return [line for line in stderr.splitlines() if line.strip() and not line.startswith("tfopt")]


def test_python_warnings_and_log_records_are_dropped_unless_verbose(capsys):
    torch_debug = logging.getLogger("torch.onnx._internal.test_quiet")
    torch_debug.setLevel(logging.DEBUG)  # a library that turns its own logger up, as exporters do
    hub = logging.getLogger("huggingface_hub.test_quiet")  # a library with its own handler, set up at import
    hub.addHandler(logging.StreamHandler(sys.stderr))
    hub.propagate = False
    hub.setLevel(logging.WARNING)  # its own level: an earlier test's import may have turned huggingface_hub's down to ERROR
    handlers_before = list(logging.getLogger().handlers)
    with third_party_output(False, onnxruntime=False):
        assert not is_verbose()
        logging.warning("Please consider to run pre-processing before quantization.")  # would install basicConfig
        torch_debug.debug("DEBUG line of an exporter")
        logging.getLogger("transformers.modeling_utils").warning("a transformers warning")
        hub.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD")
        warnings.warn("old API", DeprecationWarning)
        warnings.warn("shape mismatch", UserWarning)
    assert logging.getLogger().handlers == handlers_before  # nothing was left behind
    assert capsys.readouterr().err == ""
    hub.warning("outside tfopt's commands logging works as before")
    assert "works as before" in capsys.readouterr().err
    with third_party_output(True, onnxruntime=False):
        assert is_verbose()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.warn("shape mismatch", UserWarning)
        assert [str(w.message) for w in caught] == ["shape mismatch"]
    assert not is_verbose()


def test_native_writes_to_fd_2_are_dropped_while_tfopts_own_lines_show(tmp_path):
    """TensorFlow's absl lines are written by C++ straight to fd 2; only a process shows it."""
    script = textwrap.dedent(
        """
        import os, sys
        from tfopt.console import third_party_output
        with third_party_output(False, onnxruntime=False):
            os.write(2, b"I0000 cudart_stub.cc:31] Could not find cuda drivers\\n")
            print("tfopt: mine", file=sys.stderr)
        os.write(2, b"after\\n")
        with third_party_output(True, onnxruntime=False):
            os.write(2, b"verbose native\\n")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["tfopt: mine", "after", "verbose native"]


@pytest.mark.skipif(importlib.util.find_spec("tfopt_bert_pt") is None, reason="needs the bert_pt adapter (PyTorch deployment)")
def test_a_real_run_prints_only_tfopts_lines_and_verbose_lets_the_libraries_speak(tmp_path):
    quiet = _tfopt("run", "--plugin", "bert_pt", "--model", "tiny-bert", "--precision", "int8", "--no-benchmark",
                   "--output", "out", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert _foreign_lines(quiet.stderr) == []
    assert "WARNING:root" not in quiet.stderr and "DEBUG" not in quiet.stderr and "Warning" not in quiet.stderr
    assert "tfopt: [5/6] verify ..." in quiet.stderr and quiet.stdout.startswith("tfopt PASSED")
    # the exporters warn of their own accord (the legacy one that it is deprecated): -v shows it
    loud = _tfopt("-v", "export", "--plugin", "bert_pt", "--model", "tiny-bert", "--exporter", "legacy", "--output", "out",
                  cwd=tmp_path)
    assert loud.returncode == 0, loud.stderr
    assert _foreign_lines(loud.stderr), loud.stderr
    assert loud.stdout.startswith("exported ")  # the exporters' prints go to stderr, never into the results


@pytest.mark.skipif(importlib.util.find_spec("tfopt_bert_tf") is None, reason="needs the bert_tf adapter (TensorFlow deployment)")
def test_a_real_tensorflow_run_prints_only_tfopts_lines(tmp_path):
    """TensorFlow's absl lines ("Could not find cuda drivers ...") come from C++ on fd 2, past TF_CPP_MIN_LOG_LEVEL."""
    quiet = _tfopt("run", "--plugin", "bert_tf", "--model", "tiny-bert-tf", "--no-benchmark", "--output", "out", cwd=tmp_path)
    assert quiet.returncode == 0, quiet.stderr
    assert _foreign_lines(quiet.stderr) == []
    assert quiet.stdout.startswith("tfopt PASSED")
