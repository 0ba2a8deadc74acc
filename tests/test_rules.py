"""Every value that reaches a rule's shell command is quoted: each placeholder is `:q`, or one of
the few that cannot hold a user's text (the thread count, a resource number), or a `*flags`
parameter the rules build with `shlex.join` (checked here on the default config). Every job
that runs the `sdo` command imports the config's plug-in files."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest
import yaml
from conftest import snakemake_plan
from examples import extending_blocks

ROOT = Path(__file__).resolve().parents[1]
RULES = sorted((ROOT / "workflow" / "rules").glob("*.smk")) + [ROOT / "Snakefile"]
SAFE = {"threads", "resources.gpu", "params.torch_threads", "params.seeds"}  # numbers the rules write themselves
PLACEHOLDER = re.compile(r"(?<!\{)\{([^{}]+)\}(?!\})")


def shell_commands(path: Path) -> list[str]:
    """The text of every `shell:` directive of a rule file (adjacent string literals joined)."""
    lines, commands = path.read_text().splitlines(), []
    for i, line in enumerate(lines):
        if line.strip() == "shell:":
            block = []
            for following in lines[i + 1 :]:
                if not following.strip().startswith(('"', "'")):
                    break
                block.append(following.strip())
            commands.append("".join(ast.literal_eval(part) for part in block))
    return commands


@pytest.mark.parametrize("path", RULES, ids=[p.name for p in RULES])
def test_every_shell_placeholder_is_quoted(path):
    for command in shell_commands(path):
        for name in PLACEHOLDER.findall(command):
            field, _, conversion = name.partition(":")
            assert conversion == "q" or field in SAFE or field.endswith("flags") or field == "params.plugins", (
                f"{path.name}: {{{name}}} reaches the shell unquoted in {command!r}"
            )


def test_the_flags_parameters_are_shell_quoted():
    """`flags()` (common.smk) joins a spec's flags with shlex: every word survives the shell."""
    from evals import jobs
    from evals.config import layered
    from evals.flags import to_flags

    config = layered(
        [
            ROOT / "config" / "config.yaml",
            {"runs": {"tasks": {"latent": {"task_options": {"prompt": "3", "init_images": "a dir; $(touch x) 'q'"}}}}},
        ]
    )
    spec = jobs.run_spec(config, jobs.run_jobs(config)[0])
    words = to_flags(spec)
    assert shlex.split(shlex.join(words)) == words and "--task-option" in words
    assert any("$(touch x)" in word for word in words)  # kept as data, inside one quoted word


def test_there_are_shell_commands_to_check():
    assert sum(len(shell_commands(path)) for path in RULES) >= 8


def test_every_job_but_training_passes_the_plug_ins():
    """Static: each rule that runs `python -m evals.cli` hands it `{params.plugins}`, except `train`,
    which trains the built-in embedded models only."""
    commands = [command for path in RULES for command in shell_commands(path) if "python -m evals.cli" in command]
    assert len(commands) >= 8
    for command in commands:
        assert "{params.plugins}" in command or " train {wildcards.kind:q} " in command, command


@pytest.mark.slow
def test_every_planned_job_imports_the_config_s_plug_ins(tmp_path):
    """A config naming a plug-in file (docs/extending.md's reward, in a folder whose name needs
    quoting), layered on the defaults: every `python -m evals.cli` job that `snakemake -n -p` plans
    for the sweep, the bench and the profile parses with the CLI's parser and names that file with
    --plugin, before its command."""
    from evals.cli import build_parser

    plugin = tmp_path / "my plug-ins" / "contrast_reward.py"
    plugin.parent.mkdir()
    plugin.write_text(extending_blocks()["contrast_reward.py"])
    configfile = tmp_path / "plugins.yaml"
    configfile.write_text(yaml.safe_dump({"plugins": [str(plugin)]}))
    parser = build_parser()
    seen = set()
    for words in snakemake_plan(configfile, "all", "bench", "profile"):
        args = parser.parse_args(words)
        assert args.plugin == [str(plugin)], words
        seen.add(args.command)
    assert {"run", "guide", "quality", "backward-cost", "bench", "profile"} <= seen, seen
