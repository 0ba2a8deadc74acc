"""Every command the README and docs/*.md give works as written. Fast: each `sdo` command parses
with the CLI's own parser (the plug-ins of docs/extending.md imported), each `make` target is in
the Makefile, and the README names its targets. Slow (each starts Snakemake): in a fresh copy
of the checkout's files `snakemake --unlock` runs and every other snakemake command plans (`-n`;
a report command plans the sweep it reads), the family and paper configs with tiny pipelines in
a local Hugging Face cache standing in for their weights; the proof of concept's block runs line
by line from its own folder; the API page's examples run. The workflow itself runs in
tests/test_workflow.py."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from examples import EXAMPLES, write_examples

from evals.cli import build_parser
from evals.plugins import import_plugin

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENV = {**os.environ, "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
CHECKOUT = "<checkout>"
HEREDOC = re.compile(r"<<'(\w+)'$")
# the model ids the family and paper configs name, and the tiny pipelines that stand in for them
CACHED = {
    "CompVis/stable-diffusion-v1-4": "build_tiny_sd",
    "google/ddpm-celebahq-256": "build_tiny_ddpm",
    "stabilityai/stable-diffusion-xl-base-1.0": "build_tiny_sdxl",
    "stabilityai/stable-diffusion-3.5-medium": "build_tiny_sd3",
    "black-forest-labs/FLUX.1-dev": "build_tiny_flux",
}


def blocks(page: Path) -> list[str]:
    """The ```bash blocks of a page."""
    return re.findall(r"```bash\n(.*?)```", page.read_text(), flags=re.DOTALL)


def lines(block: str) -> list[str]:
    """A block's shell lines: continuations joined, comments dropped, a heredoc kept whole as one
    line `cat > FILE <<'EOF'` followed by its body."""
    found, heredoc = [], None
    for line in block.replace("\\\n", " ").splitlines():
        if heredoc is not None:
            if line == heredoc[0]:
                found.append(heredoc[1])
                heredoc = None
            else:
                heredoc[1] += "\n" + line
            continue
        line = line.split(" #")[0].strip()
        if HEREDOC.search(line):
            heredoc = [HEREDOC.search(line).group(1), line]
        elif line:
            found.append(line)
    return found


def commands() -> dict[str, str]:
    """Every `sdo`, `snakemake` and `make` command of the pages, once each, with the first page
    that gives it."""
    found = {}
    for page in PAGES:
        for block in blocks(page):
            for line in lines(block):
                if line.split()[0] in ("sdo", "snakemake", "make"):
                    found.setdefault(line, page.name)
    return found


def snakemake_commands() -> list[str]:
    return [c for c in commands() if c.startswith("snakemake") and CHECKOUT not in c and c != "snakemake --unlock"]


def planned(command: str) -> list[str]:
    """The words that plan `command`: a report's sweep (`--report FILE` left out), with `-n`."""
    words = shlex.split(command)
    if "--report" in words:
        at = words.index("--report")
        del words[at : at + 2]
    return [*words, "-n"]


def test_every_command_parses_and_every_make_target_exists(tmp_path_factory):
    found = commands()
    readme = [c for c, page in found.items() if page == "README.md"]
    for needed in ("make run", "make test", "snakemake --report results/report.html", "sdo plan --configfile"):
        assert any(c.startswith(needed) for c in readme), needed
    for needed in (
        "config/quick.yaml",
        "tasks=[latent]",
        " bench",
        "rerun_failed=true",
        "config/profiles/slurm",
        "--resources gpu=",
        " profile",
        "config/paper.yaml",
        "config/steps.yaml",
        "config/samplers.yaml",
    ):
        assert any(needed in c for c in readme), needed
    assert "snakemake --unlock" in found and any("--rerun-incomplete" in c for c in found)
    targets = set(re.findall(r"^([a-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))
    for command in (c for c in found if c.startswith("make")):
        assert set(command.split()[1:]) <= targets, command
    plugins = write_examples(tmp_path_factory.getbasetemp())
    assert set(plugins) == EXAMPLES
    parsed = 0
    for command in (c for c in found if c.startswith("sdo ")):
        words = shlex.split(command)[1:]
        for name in (words[i + 1] for i, word in enumerate(words) if word == "--plugin"):
            import_plugin(plugins[name])  # before the parser lists the registries' choices
        args = build_parser().parse_args(words)
        assert args.command in command
        parsed += 1
    assert parsed >= 15


def _files(root: Path) -> list[str]:
    """The files a fresh clone of this tree has: the tracked ones and those about to be."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    return [name for name in listed if name and (root / name).is_file()]


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    """A copy of the checkout's files, with the folder of images config/paper.yaml edits (its
    header asks for it: data/bedroom)."""
    copy = tmp_path_factory.mktemp("fresh")
    for name in _files(ROOT):
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, copy / name)
    (copy / "data" / "bedroom").mkdir(parents=True)
    return copy


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """The environment the commands run in: a local Hugging Face cache holding tiny pipelines
    under the model ids the family and paper configs name."""
    import tiny_pipelines
    from hf_cache import cache_as

    root = tmp_path_factory.mktemp("hf")
    for index, (model_id, build) in enumerate(CACHED.items()):
        getattr(tiny_pipelines, build)(root / f"model{index}")
        cache_as(root / f"model{index}", model_id, root / "cache")
    return {**ENV, "HF_HUB_CACHE": str(root / "cache")}


def _shell(words: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(words, cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.slow
def test_unlock_works_as_written(fresh, env):
    done = _shell(["snakemake", "--unlock"], fresh, env)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def plans(fresh, env) -> dict[str, subprocess.CompletedProcess]:
    """Every snakemake command planned in the fresh copy, as many at a time as there are cores."""
    from concurrent.futures import ThreadPoolExecutor

    listed = snakemake_commands()
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        return dict(zip(listed, pool.map(lambda command: _shell(planned(command), fresh, env), listed)))


@pytest.mark.slow
@pytest.mark.parametrize("command", snakemake_commands())
def test_every_snakemake_command_plans(plans, command):
    done = plans[command]
    assert done.returncode == 0, (command, (done.stdout + done.stderr)[-3000:])


@pytest.mark.slow
def test_the_proof_of_concept_plans_from_its_own_folder(fresh, env, tmp_path):
    """The block that names the checkout, line by line in a folder of its own: its files written
    and copied, its sweep planned, and its report command planning the same sweep."""
    (block,) = [b for page in PAGES for b in blocks(page) if CHECKOUT in b]
    folder = tmp_path / "poc"
    folder.mkdir()
    reports = 0
    for line in lines(block):
        line = line.replace(CHECKOUT, str(fresh))
        words = shlex.split(line.splitlines()[0])
        if words[0] in ("mkdir", "cd"):
            continue  # the folder is `folder`
        if words[0] == "cat":
            (folder / words[2]).write_text(line.split("\n", 1)[1] + "\n")
        elif words[0] == "cp":
            shutil.copy(words[1], folder / Path(words[1]).name)
        else:
            assert words[0] == "snakemake", line
            if "--report" in words:
                reports += 1
                assert "--configfile poc.yaml" in line, "the report must read the sweep poc.yaml planned"
            done = _shell(planned(line), folder, env)
            assert done.returncode == 0, (line, (done.stdout + done.stderr)[-3000:])
    assert reports == 1 and "my_metric.py:ink" in (folder / "poc.yaml").read_text()


@pytest.mark.slow
def test_the_api_examples_run():
    """docs/api.md's Python blocks, one after another in one namespace, as a notebook runs them."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        namespace: dict = {}
        for code in re.findall(r"```python\n(.*?)```", (ROOT / "docs" / "api.md").read_text(), flags=re.DOTALL):
            exec(compile(code, "docs/api.md", "exec"), namespace)
    finally:
        torch.set_num_threads(threads)
    assert namespace["record"]["status"] == "ok"
    assert namespace["estimate"].nfe_backward == 1 and namespace["images"].shape[0] == 4
