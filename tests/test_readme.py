"""Every command the README gives works as written in a fresh copy of the checkout: the sdo
commands parse, `snakemake --unlock` runs, and every other snakemake command plans (the tiny
sweep in test_sweep.py runs the workflow and builds its report)."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from evals.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


def readme_commands() -> list[str]:
    """The README's shell commands in ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL):
        for command in block.replace("\\\n", " ").splitlines():
            command = command.split(" #")[0].strip()
            if command.startswith(("snakemake", "sdo", "make")):
                commands.append(command)
    return commands


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A copy of the tracked files, as a fresh clone has them."""
    copy = tmp_path_factory.mktemp("fresh")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in tracked:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    return copy


def test_the_readme_names_its_commands():
    commands = readme_commands()
    assert "make run" in commands and "make test" in commands
    assert "snakemake --unlock" in " ".join(commands) or "snakemake --unlock" in (ROOT / "README.md").read_text()
    assert any(c.startswith("snakemake --report") for c in commands)
    assert any(" bench" in c for c in commands) and any("config/quick.yaml" in c for c in commands)


def test_every_sdo_command_parses():
    parser = build_parser()
    parsed = 0
    for command in readme_commands():
        if not command.startswith("sdo ") or "[" in command or "{" in command or "..." in command:
            continue  # the synopsis lines show alternatives, not commands
        words = shlex.split(command)[1:]
        if "--plugin" not in words:
            parser.parse_args(words)
            parsed += 1
    assert parsed >= 3


def test_unlock_works_as_written(fresh):
    done = subprocess.run(["snakemake", "--unlock"], cwd=fresh, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("command", [c for c in readme_commands() if c.startswith("snakemake") and "--unlock" not in c
                                     and "--report" not in c and "<checkout>" not in c])
def test_every_snakemake_command_plans(fresh, command):
    done = subprocess.run([*shlex.split(command), "-n"], cwd=fresh, capture_output=True, text=True, timeout=300, env=ENV)
    assert done.returncode == 0, (command, (done.stdout + done.stderr)[-2000:])
