"""Configs are refused before any job runs, and every accepted config makes commands the CLI accepts."""

from __future__ import annotations

import copy
import dataclasses
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import planned_commands

from evals.cli import build_parser
from evals.config import ConfigError, check_config
from evals.tables import methods_table
from sdo.estimators import ESTIMATORS

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())


def _every_option() -> dict:
    """The default config with every optional key and every estimator option set."""
    config = copy.deepcopy(DEFAULT)
    config["runs"]["variants"].update(
        full_checkpoint={"method": "full", "checkpoint": True},
        alignprop={"method": "truncated", "tail": 2, "randomize": True, "checkpoint": False, "seed": 3},
        doodl_mix={"method": "doodl", "mix": 0.9},
        shortcut_random={"method": "shortcut", "at": "random", "seed": 1},
    )
    common = {
        "seeds": [4],
        "metrics": ["evals.images:mean_ci95"],
        "reward_options": {"target": 1},
        "cfg_scale": 2.0,
        "lr": 0.01,
        "reward_tolerance": 0.05,
        "betas": [0.9, 0.9],
        "audit_every": 2,
        "precision": "bf16-autocast",
        "fallback_below": 0.5,
        "audit_checkpoint": True,
        "metric_options": {"clip_model": ""},
    }
    tasks = config["runs"]["tasks"]
    for task in tasks.values():
        task.update(common, variants=list(config["runs"]["variants"]))
    tasks["latent"]["task_options"] = {"prompt": 3, "renormalize": True}
    tasks["conditioning"]["chains"] = [
        {"steps": 6, "sampler": "ddim", "sampler_options": {"eta": 0.3}, "variants": ["full", "shortcut"]}
    ]  # the conditioning task runs the DDIM model
    tasks["latent"]["chains"] = [
        {"steps": 20, "start_step": 18, "variants": ["full", "shortcut", "adjoint"]},
        {"steps": 20, "start_step": 10, "init": "invert", "variants": ["full", "shortcut"]},
    ]
    tasks["conditioning"]["task_options"] = {"prompt": "none", "eval_samples": 6, "monitor_samples": 4}
    tasks["finetune"]["task_options"] = {"lora_rank": 0, "eval_samples": 6, "prompts": ["1", "2"]}
    return config


def _with(path: str, value) -> dict:
    config = copy.deepcopy(DEFAULT)
    *parents, last = path.split(".")
    node = config
    for key in parents:
        node = node[key]
    node[last] = value
    return config


TASK = {"models": ["embedded"], "variants": ["full"], "steps": [2], "iters": 1, "batch": 2, "reward": "classifier"}
BAD = [
    (
        "runs.variants.shortcut",
        {"method": "shortcut", "steps": "first"},
        ["runs.variants.shortcut", "'steps'", "at (str), seed (int)"],
    ),
    (
        "runs.variants.shortcut",
        {"method": "shortcut", "at": "middle"},
        ["runs.variants.shortcut", "'middle'", "'first', 'last', 'random', 'all'"],
    ),
    ("runs.variants.full", {"method": "sgd"}, ["runs.variants.full", "'sgd'", "adjoint", "shortcut"]),
    (
        "runs.variants.truncated",
        {"method": "truncated", "tail": 0},
        ["runs.variants.truncated", "tail must be >= 1, got 0"],
    ),
    ("runs.variants.doodl", {"method": "doodl", "mix": 0.4}, ["runs.variants.doodl", "0.4", "(0.5, 1)"]),
    ("runs.variants.full", {"method": "full", "checkpoint": "yes"}, ["runs.variants.full", "'yes'", "is not a bool"]),
    ("runs.tasks.latent.steps", [10, 0], ["runs.tasks.latent.steps.1", "0", "positive"]),
    ("runs.tasks.latent.iters", 0, ["runs.tasks.latent.iters", "0", "a positive integer"]),
    (
        "runs.tasks.latent.reward",
        "beauty",
        ["runs.tasks.latent.reward", "'beauty'", "classifier, inpaint, style, superres"],
    ),
    ("runs.tasks.latent.reward", "clip", ["runs.tasks.latent.reward", "'clip' is not offered for digits images"]),
    ("runs.tasks.latent.reward", "a:b:c", ["runs.tasks.latent.reward", "'a:b:c'", "package.module:function"]),
    (
        "runs.tasks.latent.reward",
        "nosuchpkg.mod:fn",
        ["runs.tasks.latent.reward", "'nosuchpkg.mod'", "cannot be imported"],
    ),
    (
        "runs.tasks.latent.reward",
        "config/rewards/saturation.py:nosuch",
        ["runs.tasks.latent.reward", "defines no 'nosuch'"],
    ),
    ("runs.tasks.latent.metrics", ["evals.images:nosuch"], ["runs.tasks.latent.metrics", "defines no 'nosuch'"]),
    ("runs.seeds", [1, 1, 1], ["runs.seeds", "non-unique"]),
    ("runs.tasks.latent.steps", [5000], ["runs.tasks.latent", "T = 5000", "at most 1000"]),
    (
        "runs.tasks.latent",
        {**TASK, "models": ["embedded-flow"], "steps": [5000]},
        ["runs.tasks.latent (embedded-flow", "T = 5000", "more than flow_euler can run", "at most 1000"],
    ),
    ("runs.tasks.latent.sampler", "nonsense", ["runs.tasks.latent", "'nonsense'", "ddim", "flow_euler"]),
    (
        "runs.tasks.latent",
        {**TASK, "variants": ["doodl"], "sampler": "dpmpp_2m"},
        ["runs.tasks.latent", "doodl needs", "dpmpp_2m is"],
    ),
    (
        "runs.tasks.latent.chains",
        [{"steps": 10, "start_step": 2, "init": "invert", "sampler": "dpmpp_2m"}],
        ["runs.tasks.latent", "init=invert", "dpmpp_2m has no inversion", "ddim and flow_euler do"],
    ),
    ("runs.tasks.latent.precision", "fp8", ["runs.tasks.latent.precision", "'fp8'", "fp16-autocast"]),
    (
        "runs.tasks.latent.chains",
        [{"steps": 10, "start_step": 10}],
        ["runs.tasks.latent", "start_step 10", "below T = 10"],
    ),
    ("runs.tasks.conditioning.task_options", {"start_step": 4}, ["runs.tasks.conditioning.task_options", "truncation"]),
    (
        "runs.tasks.latent.task_options",
        {"lora_rank": 2},
        ["runs.tasks.latent.task_options", "'lora_rank'", "prompt (str)"],
    ),
    ("runs.tasks.latent.task_options", {"monitor_samples": 2}, ["runs.tasks.latent.task_options", "'monitor_samples'"]),
    (
        "runs.tasks.latent.reward_options",
        {"target": "three"},
        ["runs.tasks.latent.reward_options", "'three' is not a int"],
    ),
    ("runs.tasks.latent.lora_rank", 2, ["runs.tasks.latent", "'lora_rank'", "allowed keys"]),
    ("runs.tasks.painting", TASK, ["runs.tasks", "'painting'", "conditioning, finetune, latent"]),
    ("runs.tasks.latent.variants", ["full", "sdo_fast"], ["runs.tasks.latent.variants", "'sdo_fast'", "runs.variants"]),
    (
        "runs.tasks.latent.models",
        ["embedded", "elsewhere"],
        ["runs.tasks.latent.models", "'elsewhere'", "model_options"],
    ),
    (
        "runs.tasks.latent.reward",
        "nowhere/reward.py:score",
        ["runs.tasks.latent.reward", "nowhere/reward.py", "does not exist"],
    ),
    (
        "model_options",
        {"embedded": {}, "sd:/nonexistent/sd15": {}},
        ["model_options.sd:/nonexistent/sd15", "not found", "/nonexistent/sd15"],
    ),
    (
        "model_options",
        {"embedded": {"dtype": "float16"}, "embedded-flow": {}},
        ["model_options.embedded", "'dtype'", "weights (str)"],
    ),
    ("tasks", ["latent", "painting"], ["config key tasks", "'painting'", "latent"]),
    ("variants", ["shortcut", "magic"], ["config key variants", "'magic'", "shortcut"]),
    ("bench.wrt", ["latent", "noise"], ["bench.wrt.1", "'noise'", "latent, cond or weights"]),
    ("bench.variants.full", {"method": "adjoint"}, ["bench.variants.full.method", "'full' was expected"]),
    (
        "plugins",
        ["nowhere/plugin.py"],
        ["config key plugins", "nowhere/plugin.py", "does not exist", "a Python file that registers"],
    ),
    ("colour", "blue", ["(top level)", "'colour'", "allowed keys"]),
]


@pytest.mark.parametrize("path, value, words", BAD, ids=[f"{p}={v}" for p, v, _ in BAD])
def test_bad_values_are_refused_naming_key_value_and_what_is_allowed(path, value, words):
    with pytest.raises(ConfigError) as caught:
        check_config(_with(path, value), base=ROOT)
    message = str(caught.value)
    assert all(word in message for word in words), message


@pytest.mark.parametrize("kind", ["denoiser", "flow_denoiser", "classifier"])
def test_a_truncated_weight_file_is_refused_at_plan_time(tmp_path, kind):
    """A weight file that is there but unreadable (cut short) is found before any job runs, the
    file named: the workflow retrains missing files only, so a job would fail reading it."""
    weights = tmp_path / "models"
    shutil.copytree(ROOT / DEFAULT["weights"], weights)
    broken = weights / f"{kind}.safetensors"
    with broken.open("r+b") as handle:
        handle.truncate(100)
    with pytest.raises(ConfigError) as caught:
        check_config({**DEFAULT, "weights": str(weights)}, base=ROOT)
    assert str(broken) in str(caught.value) and "cannot be read" in str(caught.value), str(caught.value)


def test_the_default_memory_budget_is_stated_and_the_config_s_reaches_every_job():
    """Each command that loads a model states the budget it takes without --mem-mb; a planned
    run, guided pass and backward-cost job of the default config takes mem_mb_per_run."""
    import argparse

    from evals import jobs
    from evals.cli import COMMANDS
    from sdo.memory import default_budget_mb

    budgeted = {name for name, (cls, *_) in COMMANDS.items() if "mem_mb" in {f.name for f in dataclasses.fields(cls)}}
    assert {"run", "bench", "guide", "backward-cost", "quality", "train", "profile"} <= budgeted
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    for name in budgeted:
        text = " ".join(commands[name].format_help().split())
        assert "--mem-mb" in text and "default: half the memory available when the command starts" in text, name
        assert f"{default_budget_mb()} MiB now" in text, name
    budget = DEFAULT["mem_mb_per_run"]
    assert isinstance(budget, int) and budget > 0
    specs = [jobs.run_spec(DEFAULT, job) for job in jobs.run_jobs(DEFAULT)]
    specs += [spec for spec, _ in jobs.guide_specs(DEFAULT)]
    specs += [
        jobs.backward_cost_spec(DEFAULT, task, m) for task, b in jobs.active_tasks(DEFAULT).items() for m in b["models"]
    ]
    assert len(specs) > 10 and all(spec.mem_mb == budget for spec in specs)
    planned = [words for words in planned_commands(DEFAULT) if words[0] in ("run", "guide", "backward-cost")]
    assert planned and all(parser.parse_args(words).mem_mb == budget for words in planned)


def test_option_lists_come_from_the_code():
    """The schema holds no estimator option: the estimators' dataclasses do, and the config check
    refuses what they refuse, naming what they allow."""
    text = (ROOT / "config" / "schema.yaml").read_text()
    for cls in ESTIMATORS.values():
        for field in dataclasses.fields(cls):
            if field.init and field.name not in ("seed",):
                assert f" {field.name}:" not in text, (cls.name, field.name)
    with pytest.raises(ConfigError, match=r"at \(str\), seed \(int\)"):
        check_config(_with("runs.variants.shortcut", {"method": "shortcut", "k": 1}), base=ROOT)


@pytest.mark.parametrize("name", ["default", "every_option"])
def test_every_generated_command_parses_back_to_its_spec(name):
    """Every job's flags parse with the CLI's own parser and give the spec they came from."""
    from evals import jobs
    from evals.cli import COMMANDS
    from evals.flags import from_args

    config = DEFAULT if name == "default" else _every_option()
    config = {**config, "weights": str(ROOT / config["weights"])}
    check_config(config, base=ROOT)
    parser = build_parser()
    seen = set()
    for words in planned_commands(config):
        args = parser.parse_args(words)
        seen.add(args.command)
        spec = from_args(
            COMMANDS[args.command][0], args, **({"seed": args.seed[0]} if args.command in ("run", "guide") else {})
        )
        if args.command == "run":
            assert spec.variant
            assert any(
                spec
                == jobs.run_spec(config, job, seed=0).__class__(
                    **{**vars(jobs.run_spec(config, job, 0)), "out": spec.out}
                )
                for job in jobs.run_jobs(config)
            )
    assert {"run", "quality", "bench", "backward-cost", "guide"} <= seen
    if name == "every_option":
        renormalized = [w for w in planned_commands(config) if "renormalize=true" in w]
        assert renormalized and all(("renormalize", True) in parser.parse_args(w).task_options for w in renormalized)


@pytest.mark.slow
def test_snakemake_dry_run_refuses_a_bad_config(tmp_path):
    configfile = tmp_path / "bad.yaml"
    configfile.write_text(yaml.safe_dump(_with("runs.variants.shortcut", {"method": "shortcut", "at": "middle"})))
    done = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", str(configfile)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "runs.variants.shortcut" in done.stdout + done.stderr and "'middle'" in done.stdout + done.stderr


def test_methods_table_means_and_intervals():
    """Two ok seeds (rewards 1 and 3), one diverged run counted apart, one failed variant."""
    rows = [
        {
            "model": "embedded",
            "task": "latent",
            "wrt": "latent",
            "variant": "full",
            "chain": "T10",
            "seed": s,
            "status": status,
            "device": "cpu",
            "seconds_per_iter": sec,
            "saved_bytes": 100,
            "start_deviation": 0.0,
            "final_reward_mean": reward,
            "final_fid": fid,
        }
        for s, status, sec, reward, fid in [
            (0, "ok", 1.0, 1.0, 10.0),
            (1, "ok", 3.0, 3.0, 20.0),
            (2, "diverged", 9.0, None, None),
        ]
    ] + [
        {
            "model": "embedded",
            "task": "latent",
            "wrt": "latent",
            "variant": "adjoint",
            "chain": "T10",
            "seed": 0,
            "status": "failed",
            "device": "cpu",
            "seconds_per_iter": None,
            "saved_bytes": None,
            "start_deviation": None,
            "final_reward_mean": None,
            "final_fid": None,
        }
    ]
    table = methods_table(pd.DataFrame(rows)).set_index("variant")
    full = table.loc["full"]
    assert full["runs"] == 2 and full["runs_diverged"] == 1 and full["runs_failed"] == 0
    assert full["final_reward_mean"] == pytest.approx(2.0) and full["final_fid"] == pytest.approx(15.0)
    assert full["seconds_per_iter"] == pytest.approx(2.0)
    # t(0.975, 1) = 12.706; std of {1, 3} = sqrt(2); n = 2
    assert full["final_reward_ci95_seeds"] == pytest.approx(12.7062047 * 2**0.5 / 2**0.5, rel=1e-6)
    assert table.loc["adjoint", "runs"] == 0 and table.loc["adjoint", "runs_failed"] == 1
    assert pd.isna(table.loc["adjoint", "final_reward_mean"])


def _pins(lines) -> set[str]:
    return {line.replace(" ", "") for line in lines if not line.startswith("-e")}


def test_environments_pin_what_the_package_needs():
    """The rules' conda env and environment.yml install exactly pyproject's dependencies."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = _pins(project["dependencies"])
    extras = _pins(line for group in project["optional-dependencies"].values() for line in group)
    rules_env = yaml.safe_load((ROOT / "workflow" / "envs" / "sdo.yaml").read_text())
    project_env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_of = lambda env: next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))  # noqa: E731
    assert _pins(pip_of(rules_env)) == needed - {"snakemake==9.27.1"}
    assert _pins(pip_of(project_env)) == needed | extras
    assert "-e ." in pip_of(project_env) and not any(line.startswith("-e") for line in pip_of(rules_env))


def test_a_config_naming_some_tasks_is_told_which_others_still_run():
    """config.yaml layered under a file naming only the latent task: the note names the tasks
    the defaults still run and the key that limits the sweep; with that key, no note."""
    from evals.config import layered, layering_note

    mine = {"runs": {"tasks": {"latent": {"steps": [5], "chains": []}}}}
    config = layered([DEFAULT, mine])
    note = layering_note([mine], config)
    running = [task for task in DEFAULT["runs"]["tasks"] if task != "latent"]
    assert running and note is not None and "tasks: [latent]" in note
    assert all(task in note for task in running)
    limited = {**mine, "tasks": ["latent"]}
    assert layering_note([limited], layered([DEFAULT, limited])) is None
    assert layering_note([{"seed": 3}], layered([DEFAULT, {"seed": 3}])) is None


def test_a_config_setting_a_task_s_steps_is_told_of_the_chains_it_inherits():
    from evals.config import layered, layering_note

    mine = {"tasks": ["latent"], "runs": {"tasks": {"latent": {"steps": [5]}}}}
    note = layering_note([mine], layered([DEFAULT, mine]))
    assert note is not None and "T50-from45" in note and "chains: []" in note
    only = {"tasks": ["latent"], "runs": {"tasks": {"latent": {"steps": [5], "chains": []}}}}
    assert layering_note([only], layered([DEFAULT, only])) is None
