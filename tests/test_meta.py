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


# ----------------------------------------------------------------------------- the house: pipeline -> report -> page

PACKAGE = ROOT / "core" / "tfopt"
# Which modules of the house each one may import, directly or through any other tfopt module, at the top
# of the file or inside a function (a lazy import is an import). Data flows one way: the pipeline runs the
# stages, report.py sums their results into report.json, html_report.py draws the page from that report.
# profile.py is a stage of the pipeline: it takes StageRunner from tfopt.stages, never from the pipeline.
# The run directory's file names (REPORT_FILE, PAGE_FILE, PROFILE_FILE) live in tfopt.results.
HOUSE_MAY_IMPORT = {
    "tfopt.pipeline": {"tfopt.stages", "tfopt.report", "tfopt.html_report", "tfopt.profile"},
    "tfopt.profile": {"tfopt.stages", "tfopt.report"},
    "tfopt.html_report": {"tfopt.report"},
    "tfopt.report": set(),
    "tfopt.stages": set(),
}


def tfopt_imports(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module of the package -> the package's modules it imports, read with ast (imports inside
    functions, ``importlib.import_module("tfopt.x")`` and the parent packages an import runs included)."""
    files = {}
    for path in package.rglob("*.py"):
        parts = list(path.relative_to(package.parent).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path

    def with_parents(name: str) -> set[str]:
        parts = name.split(".")
        return {".".join(parts[:end]) for end in range(1, len(parts) + 1)} & set(files)

    graph = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                found.add(base)
                found.update(f"{base}.{alias.name}" for alias in node.names)  # `from . import profile`
            elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module":
                if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                    found.add(node.args[0].value)
        graph[name] = set().union(*(with_parents(module) for module in found)) - {name} if found else set()
    return graph


def import_chains(graph: dict[str, set[str]], start: str) -> dict[str, list[str]]:
    """Every module ``start`` imports, directly or not -> one chain of imports that gets there."""
    chains = {start: [start]}
    todo = [start]
    while todo:
        module = todo.pop()
        for imported in sorted(graph.get(module, ())):
            if imported == start:
                return {**chains, "CYCLE": chains[module] + [start]}
            if imported not in chains:
                chains[imported] = chains[module] + [imported]
                todo.append(imported)
    del chains[start]
    return chains


def house_problems(graph: dict[str, set[str]]) -> list[str]:
    problems = []
    for module, allowed in HOUSE_MAY_IMPORT.items():
        chains = import_chains(graph, module)
        if "CYCLE" in chains:
            problems.append("import cycle: " + " -> ".join(chains["CYCLE"]))
        for other in sorted((set(HOUSE_MAY_IMPORT) & set(chains)) - allowed - {module}):
            problems.append(f"{module} must not import {other}: " + " -> ".join(chains[other]))
    return problems


def test_the_house_imports_flow_one_way():
    """pipeline -> report -> page, and profile does not import the pipeline: no circle, lazy imports counted."""
    graph = tfopt_imports()
    assert set(HOUSE_MAY_IMPORT) <= set(graph)
    assert {"tfopt.report", "tfopt.html_report", "tfopt.profile"} <= graph["tfopt.pipeline"]  # the reader sees them
    assert house_problems(graph) == []


def test_the_house_check_reads_imports_inside_functions(tmp_path):
    """A lazy ``from .pipeline import`` inside a function of report.py is a circle the check reports."""
    package = tmp_path / "tfopt"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "pipeline.py").write_text("from .report import build_report\n")
    (package / "report.py").write_text("def summary():\n    from .pipeline import StageRunner\n")
    problems = house_problems(tfopt_imports(package))
    assert "import cycle: tfopt.report -> tfopt.pipeline -> tfopt.report" in problems
    assert "tfopt.report must not import tfopt.pipeline: tfopt.report -> tfopt.pipeline" in problems
