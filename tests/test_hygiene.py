"""The checkout stays clean and says one thing in every place: no archives tracked, `make bench`
runs the bench, one Python version across the files that state it, every third-party package
the code imports declared, every exception in .gitignore used, and no test module importing
another (shared helpers live in conftest.py and plain modules)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def _git(*args: str) -> list[str]:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.splitlines()


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution).lower()


def test_no_archive_is_tracked():
    archives = [path for path in _git("ls-files") if re.search(r"\.(whl|tar\.gz|tgz|zip)$", path)]
    assert not archives, archives


def test_make_bench_runs_the_bench_target():
    done = subprocess.run(["make", "-n", "bench"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "snakemake --cores all bench" in done.stdout.splitlines(), done.stdout


def test_one_python_version_everywhere():
    requires = re.fullmatch(r">=\s*3\.(\d+)", PYPROJECT["project"]["requires-python"])
    target = re.fullmatch(r"py3(\d+)", PYPROJECT["tool"]["ruff"]["target-version"])
    environment = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pinned = [re.fullmatch(r"python\s*=+\s*3\.(\d+)", d) for d in environment if isinstance(d, str)]
    readme = re.findall(r"Python 3\.(\d+)", (ROOT / "README.md").read_text())
    assert requires and target and any(pinned) and readme
    versions = {requires.group(1), target.group(1), *(m.group(1) for m in pinned if m), *readme}
    assert len(versions) == 1, versions


def _imports(path: Path) -> list[str]:
    """The modules a file imports by absolute name, at any depth (lazy imports included)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_every_third_party_import_is_a_declared_dependency():
    declared = {
        _normalized(re.match(r"[A-Za-z0-9._-]+", line).group(0)) for line in PYPROJECT["project"]["dependencies"]
    }
    distributions = importlib.metadata.packages_distributions()
    undeclared = {}
    for package in ("sdo", "evals"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for name in {module.split(".")[0] for module in _imports(path)}:
                if name in sys.stdlib_module_names or name in ("sdo", "evals"):
                    continue
                provided = {_normalized(d) for d in distributions.get(name, [])}
                if not provided & declared:
                    undeclared.setdefault(name, (sorted(provided) or "no installed distribution", []))[1].append(
                        str(path.relative_to(ROOT))
                    )
    assert not undeclared, f"imported but not in pyproject's dependencies: {undeclared}"


def test_every_gitignore_exception_keeps_a_tracked_file():
    exceptions = [
        line[1:] for line in (ROOT / ".gitignore").read_text().splitlines() if line.startswith("!") and line[1:]
    ]
    assert exceptions
    for pattern in exceptions:
        assert _git("ls-files", "--cached", "--ignored", f"--exclude={pattern}"), f"!{pattern} matches no tracked path"


def test_no_test_module_imports_another():
    for path in sorted((ROOT / "tests").glob("*.py")):
        imported = [name for name in _imports(path) if name.split(".")[0].startswith("test_")]
        assert not imported, f"{path.name} imports {imported}: move what it shares to conftest.py or a plain module"
