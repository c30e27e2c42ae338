"""Every command the README and the `--help` texts show a user is run here, and must pass.

The examples are read from the sources themselves (README.md's code blocks, the
`Example(s):` block of `tfopt --help` and of each command's `--help`), so a new example is
covered the day it is written. Each block runs top to bottom in a fresh directory that
holds what its placeholders name:

- ``out/``: a finished `tfopt run` of bert_pt's default model (the real all-MiniLM-L6-v2),
  made by the documented `tfopt run --plugin bert_pt --output out/` itself;
- ``./my-bert``: a small Hugging Face BERT directory (2 layers, hidden 128);
- ``model.onnx``: a BERT exported by tfopt, one layer at bert-base's width (hidden 768,
  12 heads), so the `--num_heads 12 --hidden_size 768` examples hold;
  ``model.opt.onnx``: it optimized.

Commands run in-process through click (`tfopt`, `.venv/bin/tfopt`, `python -m tfopt`,
`python -m tfopt.optimizer` are all the same click commands), so torch is imported once.
An identical `tfopt run` in two blocks is run once and its output directory copied.
The only commands not run are the set-up scripts the suite itself runs in
(:data:`RUN_BY_CI`); any other command the test cannot run fails it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import re
import shlex
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from tfopt.cli import main
from tfopt.optimizer import optimize_command

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
HELP_COMMANDS = ("", *main.list_commands(None))  # `tfopt --help` and every command's, new and lazily imported ones included
TFOPT_PROGRAMS = ("tfopt", ".venv/bin/tfopt", ".venv-tf/bin/tfopt")
PYTHON_PROGRAMS = ("python", "python3", ".venv/bin/python", ".venv-tf/bin/python")
KNOWN_PROGRAMS = (*TFOPT_PROGRAMS, *PYTHON_PROGRAMS, "bash", "pip", "sh")
# The suite runs inside these (CI is `bash scripts/install.sh && bash scripts/test.sh`): they ran if this runs.
RUN_BY_CI = {"bash scripts/install.sh", "bash scripts/test.sh"}
MAX_SECONDS_PER_COMMAND = 240  # a documented example a user waits minutes for is the wrong example


@dataclass(frozen=True)
class Block:
    """Commands shown together, run in order in one directory."""

    where: str  # "README.md line 12" or "tfopt run --help"
    commands: tuple[str, ...]


# ----------------------------------------------------------------------------- reading the examples


def _is_command(line: str) -> bool:
    words = line.split()
    while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # ENV=value prefixes
        words.pop(0)
    return bool(words) and words[0] in KNOWN_PROGRAMS


def _strip_comment(line: str) -> str:
    return re.split(r"\s+#\s", line, maxsplit=1)[0].rstrip()


def _joined(lines: list[str]) -> list[str]:
    """Lines with a trailing backslash continued on the next one."""
    joined: list[str] = []
    pending = ""
    for line in lines:
        text = line.strip()
        if pending:
            text = pending + " " + text
        if text.endswith("\\"):
            pending = text[:-1].rstrip()
            continue
        pending = ""
        joined.append(text)
    return joined


def readme_blocks(text: str) -> list[Block]:
    """Indented (4 spaces) and fenced code blocks of README.md that hold commands."""
    blocks: list[Block] = []
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        line = lines[index]
        fenced = line.startswith("```")
        if fenced or (line.startswith("    ") and (index == 0 or not lines[index - 1].strip())):
            start = index + 1
            body: list[str] = []
            index += 1 if fenced else 0
            while index < len(lines):
                current = lines[index]
                if fenced and current.startswith("```"):
                    index += 1
                    break
                if not fenced and current.strip() and not current.startswith("    "):
                    break
                body.append(current)
                index += 1
            commands = [_strip_comment(cmd) for cmd in _joined([b for b in body if b.strip()]) if _is_command(cmd)]
            if commands:
                blocks.append(Block(f"README.md line {start if fenced else start - 1}", tuple(commands)))
            continue
        index += 1
    return blocks


def help_text(command: str) -> str:
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout


def help_block(command: str) -> Block:
    """The indented lines after `Example:`/`Examples:` in a command's --help, up to the next blank line."""
    lines = help_text(command).splitlines()
    starts = [i for i, line in enumerate(lines) if line.strip() in ("Example:", "Examples:")]
    assert starts, f"`tfopt {command} --help` shows no examples"
    body = []
    for line in lines[starts[0] + 1:]:
        if not line.strip():
            break
        body.append(line)
    commands = [_strip_comment(cmd) for cmd in _joined(body)]
    unknown = [cmd for cmd in commands if not _is_command(cmd)]
    assert not unknown, f"`tfopt {command} --help` examples this test cannot run: {unknown}"
    return Block(f"tfopt {command} --help".replace("  ", " "), tuple(commands))


def documented_blocks() -> list[Block]:
    return readme_blocks(README.read_text(encoding="utf-8")) + [help_block(command) for command in HELP_COMMANDS]


# ----------------------------------------------------------------------------- running them


def _installed_adapters() -> set[str]:
    return {entry_point.name for entry_point in importlib.metadata.entry_points(group="tfopt")}


@dataclass
class Outcome:
    command: str
    subcommand: str  # "run", "verify", "optimize", ...
    exit_code: int
    stdout: str
    stderr: str
    seconds: float


def _subcommand(target, args: list[str]) -> str:
    if target is optimize_command:
        return "optimize"
    words = iter(args)
    for word in words:
        if word == "-p":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return ""


class DocumentedCommands:
    """Runs documented commands in-process; remembers `tfopt run`s so an identical one runs once."""

    def __init__(self, scratch: Path):
        self.scratch = scratch
        self.runs: dict[tuple, tuple[Path, Outcome]] = {}
        self.timings: list[tuple[str, float]] = []

    def split(self, command: str) -> tuple[dict[str, str], list[str]]:
        words = shlex.split(command)
        env = {}
        while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):
            name, _, value = words.pop(0).partition("=")
            env[name] = value
        return env, words

    def click_target(self, words: list[str]):
        """(click command, its arguments) for a documented command line."""
        program, args = words[0], words[1:]
        if program in TFOPT_PROGRAMS:
            return main, args
        if program in PYTHON_PROGRAMS and args[:2] == ["-m", "tfopt"]:
            return main, args[2:]
        if program in PYTHON_PROGRAMS and args[:2] == ["-m", "tfopt.optimizer"]:
            return optimize_command, args[2:]
        raise AssertionError(f"no way to run the documented command {' '.join(words)!r}")

    def run(self, command: str, cwd: Path, *, reuse: bool = True) -> Outcome | None:
        """One command line (``a && b`` runs both); None when it is one the suite itself runs in."""
        outcomes = []
        for part in command.split("&&"):
            outcome = self._run_one(part.strip(), cwd, reuse)
            if outcome is not None and outcome.exit_code != 0:
                return outcome
            outcomes.append(outcome)
        ran = [outcome for outcome in outcomes if outcome is not None]
        return ran[-1] if ran else None

    def _run_one(self, command: str, cwd: Path, reuse: bool) -> Outcome | None:
        if command in RUN_BY_CI:
            return None
        env, words = self.split(command)
        target, args = self.click_target(words)
        key = self._run_key(target, args, env)
        if reuse and key is not None and key in self.runs:  # the same `tfopt run` again: copy its output directory
            done_dir, outcome = self.runs[key]
            output = cwd / _output_of(args)
            if output.exists():
                shutil.rmtree(output)
            shutil.copytree(done_dir, output)
            return outcome
        env = {"TFOPT_PLUGINS": None, "TFOPT_CONFIG": None, **env}
        start = time.perf_counter()
        with contextlib.chdir(cwd):
            result = CliRunner().invoke(target, args, env=env, catch_exceptions=False)
        outcome = Outcome(
            command, _subcommand(target, args), result.exit_code, result.stdout, result.stderr, time.perf_counter() - start
        )
        self.timings.append((command, outcome.seconds))
        if key is not None and outcome.exit_code == 0 and key not in self.runs:
            keep = self.scratch / f"run-{len(self.runs)}"
            shutil.copytree(cwd / _output_of(args), keep)
            self.runs[key] = (keep, outcome)
        return outcome

    @staticmethod
    def _run_key(target, args: list[str], env: dict[str, str]) -> tuple | None:
        if target is not main or "run" not in args or _output_of(args) is None:
            return None
        normalized = ["<OUTPUT>" if i and args[i - 1] == "--output" else arg for i, arg in enumerate(args)]
        return tuple(normalized), tuple(sorted(env.items()))


def _output_of(args: list[str]) -> str | None:
    return args[args.index("--output") + 1] if "--output" in args[:-1] else None


@pytest.fixture(scope="session")
def documented(tmp_path_factory):
    return DocumentedCommands(tmp_path_factory.mktemp("documented-runs"))


@pytest.fixture(scope="session")
def fixtures(documented, tmp_path_factory):
    """The directory every block starts from: my-bert/, model.onnx, model.opt.onnx, out/."""
    if "bert_pt" not in _installed_adapters():
        pytest.skip("the documented examples use the bert_pt adapter (PyTorch deployment)")
    from transformers import BertConfig, BertModel

    from tfopt.torch_kit import perturb_vector_params

    base = tmp_path_factory.mktemp("documented-fixtures")
    shapes = {
        "my-bert": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256),
        # bert-base's width and heads, one layer: what `--num_heads 12 --hidden_size 768` describes
        "bert-base-wide": dict(hidden_size=768, num_hidden_layers=1, num_attention_heads=12, intermediate_size=3072),
    }
    for name, shape in shapes.items():
        model = BertModel(BertConfig(vocab_size=1000, max_position_embeddings=128, **shape), add_pooling_layer=False)
        perturb_vector_params(model)
        model.eval().save_pretrained(base / name)
    for command in (
        "tfopt export --plugin bert_pt --model ./bert-base-wide --exporter legacy --output exported",
        "tfopt optimize --input exported/exported.onnx --output model.opt.onnx --model_type bert",
        "tfopt run --plugin bert_pt --output out/",  # README and --help: the default model, run once
    ):
        outcome = documented.run(command, base)
        assert outcome.exit_code == 0, (command, outcome.stdout, outcome.stderr)
    shutil.move(base / "exported" / "exported.onnx", base / "model.onnx")
    shutil.rmtree(base / "exported")
    shutil.rmtree(base / "bert-base-wide")
    return base


def _needed_adapters(block: Block) -> set[str]:
    return {match for command in block.commands for match in re.findall(r"--plugin[ =](\w+)", command)}


def _check_run_dir(output: Path, where: str, command: str) -> None:
    """After a `run`/`export`: the directory holds what the report names (and their weights), and files of no run.

    Every block's ``out/`` starts as another run's directory, so stale models would show here.
    """
    report = json.loads((output / "report.json").read_text())
    named = {Path(value).name for value in report["outputs"].values() if value}
    allowed = named | {f"{name}.data" for name in named}
    tfopt_files = [p.name for p in output.iterdir() if p.name.endswith((".onnx", ".onnx.data", ".json"))]
    stale = sorted(set(tfopt_files) - allowed)
    assert not stale, f"{where}: `{command}` left files of an earlier run in {output}: {stale}"


def _check(outcome: Outcome, where: str) -> None:
    shown = f"{where}: `{outcome.command}` exited {outcome.exit_code}\n{outcome.stdout}\n{outcome.stderr}"
    assert outcome.exit_code == 0, shown
    assert "tfopt: error:" not in outcome.stderr, shown
    assert outcome.seconds < MAX_SECONDS_PER_COMMAND, f"{shown}\ntook {outcome.seconds:.0f} s: make the example cheaper"
    if outcome.subcommand == "run":
        assert outcome.stdout.startswith("tfopt PASSED"), shown
    if outcome.subcommand == "verify":
        assert "-> PASS" in outcome.stdout, shown


BLOCKS = documented_blocks()


def test_the_examples_are_found():
    """The reader sees what a user sees: a change to the parsing must not silently drop examples."""
    where = {block.where: block for block in BLOCKS}
    assert {"tfopt --help"} | {f"tfopt {c} --help" for c in ("run", "export", "verify", "bench", "plugins", "optimize")} <= set(where)
    assert {f"tfopt {c} --help".replace("  ", " ") for c in HELP_COMMANDS} <= set(where)
    readme_commands = [command for block in BLOCKS if block.where.startswith("README") for command in block.commands]
    assert "tfopt run --plugin gpt2 --model tiny-gpt2 --output out/" in readme_commands
    assert "tfopt verify out/" in readme_commands  # the trailing "# ..." comment is not part of it
    assert any(command.startswith("bash scripts/install.sh && .venv/bin/tfopt run") for command in readme_commands)
    run_help = where["tfopt run --help"].commands
    assert any("--model ./my-bert" in command and "--option bench_repeat=50" in command for command in run_help)


PLACEHOLDERS = ("out/", "model.onnx", "model.opt.onnx", "my-bert")


@pytest.mark.parametrize("block", BLOCKS, ids=[block.where for block in BLOCKS])
def test_documented_commands_pass(block, documented, request, tmp_path):
    missing = _needed_adapters(block) - _installed_adapters()
    if missing:
        pytest.skip(f"{block.where} uses {', '.join(sorted(missing))}, not installed in this deployment")
    work = tmp_path / "work"
    if any(name in command for command in block.commands for name in PLACEHOLDERS):
        shutil.copytree(request.getfixturevalue("fixtures"), work, symlinks=True)
    else:
        work.mkdir()
    ran = 0
    for command in block.commands:
        outcome = documented.run(command, work)
        if outcome is None:
            continue
        _check(outcome, block.where)
        if outcome.subcommand in ("run", "export"):
            _check_run_dir(work / _output_of(documented.split(command.split("&&")[-1])[1]), block.where, command)
        ran += 1
    set_up_only = all(part.strip() in RUN_BY_CI for command in block.commands for part in command.split("&&"))
    assert ran or set_up_only, f"{block.where}: nothing was run"
