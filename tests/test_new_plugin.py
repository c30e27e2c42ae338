"""`tfopt new-plugin NAME`: the distribution it writes builds, and its tests pass as written."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
from click.testing import CliRunner

from tfopt.cli import main


def _new(tmp_path, *args):
    return CliRunner().invoke(main, ["new-plugin", *args], catch_exceptions=False)


def test_generated_plugin_builds_and_its_tests_pass(tmp_path):
    result = _new(tmp_path, "demo_fam", "--dir", str(tmp_path / "src"))
    assert result.exit_code == 0, result.output
    root = tmp_path / "src" / "tfopt-demo-fam"
    assert sorted(path.relative_to(root).as_posix() for path in root.rglob("*") if path.is_file()) == [
        "README.md", "pyproject.toml", "tests/test_demo_fam.py", "tfopt_demo_fam/__init__.py",
    ]
    # installable: a wheel builds, and it registers the entry point tfopt's host looks for
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheels"), str(root)],
        capture_output=True, text=True,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = (tmp_path / "wheels").glob("tfopt_demo_fam-0.1.0-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        entry_points = archive.read("tfopt_demo_fam-0.1.0.dist-info/entry_points.txt").decode()
    assert "[tfopt]\ndemo_fam = tfopt_demo_fam" in entry_points
    # its tests, as a user runs them before installing (the package on the path, registered by the kit)
    pytest.importorskip("torch", reason="the template's adapter exports a torch model (not in the TensorFlow deployment)")
    env = {**os.environ, "PYTHONPATH": str(root)}
    ran = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], cwd=root, env=env,
                         capture_output=True, text=True)
    assert ran.returncode == 0 and "2 passed" in ran.stdout, ran.stdout[-3000:] + ran.stderr[-2000:]


@pytest.mark.parametrize(("name", "message"), [("My-Family", "use lowercase letters"), ("1st", "use lowercase letters")])
def test_a_bad_name_is_one_line_and_writes_nothing(tmp_path, name, message):
    result = CliRunner().invoke(main, ["new-plugin", name, "--dir", str(tmp_path)])
    assert result.exit_code == 2 and message in result.output and len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_not_overwritten(tmp_path):
    (tmp_path / "tfopt-demo").mkdir()
    (tmp_path / "tfopt-demo" / "mine.py").write_text("keep me")
    result = CliRunner().invoke(main, ["new-plugin", "demo", "--dir", str(tmp_path)])
    assert result.exit_code == 2 and "exists already" in result.output
    assert [path.name for path in tmp_path.iterdir()] == ["tfopt-demo"]
    assert [path.name for path in (tmp_path / "tfopt-demo").iterdir()] == ["mine.py"]
