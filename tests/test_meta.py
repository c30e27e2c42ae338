"""Meta-tests: every hook is documented with its exact signature and has a test; report.md covers every field."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import pytest

from tfopt import hookspecs

ROOT = Path(__file__).resolve().parents[1]
HOOKS = list(hookspecs.hook_signatures().items())


def signature_line(name: str, spec) -> str:
    """``def export(ctx: RunContext) -> ExportResult | None``, as docs/plugins.md must show it."""
    signature = inspect.signature(spec)
    params = ", ".join(f"{param.name}: {param.annotation}" for param in signature.parameters.values())
    return f"def {name}({params}) -> {signature.return_annotation}"


def test_hook_names_match_the_specs():
    assert [name for name, _ in HOOKS] == list(hookspecs.HOOK_NAMES)
    assert len(HOOKS) == 6


@pytest.mark.parametrize("name, spec", HOOKS, ids=[name for name, _ in HOOKS])
def test_every_hook_is_documented_with_its_exact_signature(name, spec):
    docs = (ROOT / "docs" / "plugins.md").read_text()
    assert f"### {name}\n" in docs, f"docs/plugins.md has no section for {name}"
    assert signature_line(name, spec) in docs, f"docs/plugins.md does not show: {signature_line(name, spec)}"
    assert spec.__doc__ and spec.__doc__.strip(), f"hookspec {name} has no docstring"


def _test_function_names() -> set[str]:
    names = set()
    for path in (ROOT / "tests").glob("test_*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                names.add(node.name)
    return names


@pytest.mark.parametrize("name", hookspecs.HOOK_NAMES)
def test_every_hook_has_a_test(name):
    tests = [test for test in _test_function_names() if test.startswith(f"test_hook_{name}_")]
    assert tests, f"no test named test_hook_{name}_* in tests/"


def test_report_doc_lists_every_top_level_field(tmp_path):
    from tfopt.report import build_report
    from tfopt.results import RunContext

    report = build_report(
        RunContext(family="f", source=None, work_dir=tmp_path), adapter=None, extensions=[], stages={}, outputs={}, status="error"
    )
    docs = (ROOT / "docs" / "report.md").read_text()
    documented = set(re.findall(r"^\| `([a-z_0-9]+)` \|", docs, flags=re.MULTILINE))
    assert set(report) <= documented, f"undocumented report fields: {sorted(set(report) - documented)}"
