"""Running ONNX Runtime sessions with one-line errors (a graph ORT cannot run is user input, not a bug).

Loading goes through :func:`tfopt.bench.ort_session`, which already reports load failures in one line.
"""

from __future__ import annotations

from pathlib import Path

from tfopt.errors import TfoptError, first_line



def run_session(session, names: list[str], feed: dict, model_path: str | Path) -> list:
    """``session.run`` with a one-line error naming the model (a wrong graph is user input too)."""
    try:
        return session.run(names, feed)
    except Exception as exc:
        raise TfoptError(f"{model_path}: ONNX Runtime failed to run it ({first_line(exc)})") from None


def bound_call(session, feed: dict, names: list[str], model_path: str | Path):
    """A no-argument call that runs ``session`` on ``feed`` through IO binding, for timing.

    The inputs are bound once where numpy holds them and the outputs are left where ONNX
    Runtime allocates them, so a timed call copies no past in and no present out (what a
    generation loop that binds present to past pays, :func:`tfopt.generation.generate_onnx`).
    """
    binding = session.io_binding()
    for name, value in feed.items():
        binding.bind_cpu_input(name, value if value.flags.c_contiguous else value.copy())
    for name in names:
        binding.bind_output(name, "cpu")

    def call():
        try:
            session.run_with_iobinding(binding)
        except Exception as exc:
            raise TfoptError(f"{model_path}: ONNX Runtime failed to run it ({first_line(exc)})") from None

    return call
