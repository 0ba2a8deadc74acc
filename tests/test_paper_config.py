"""The Stable Diffusion configs plan, and every command they generate parses: the paper's
experiments (`config/paper.yaml`) and the cost sweep's CPU defaults and GPU preset."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from test_config import _planned_commands

from evals.cli import build_parser
from evals.config import ConfigError, check_config

ROOT = Path(__file__).resolve().parents[1]


def _merged(*names: str) -> dict:
    """The config files merged key by key, as Snakemake merges a --configfile into the default."""

    def merge(base: dict, update: dict) -> dict:
        return {**base, **{k: merge(base[k], v) if isinstance(v, dict) and k in base else v for k, v in update.items()}}

    config = {}
    for name in names:
        config = merge(config, yaml.safe_load((ROOT / "config" / name).read_text()))
    return config


def test_paper_config_plans_runs_on_stable_diffusion():
    check_config(_merged("config.yaml", "paper.yaml"), base=ROOT)
    parser = build_parser()
    runs = [parser.parse_args(words) for words in _planned_commands(ROOT / "config" / "paper.yaml")]
    runs = [args for args in runs if args.command == "run"]
    assert {args.task for args in runs} == {"latent", "conditioning", "finetune"}
    assert all(args.model.startswith("sd:") and args.steps == 50 and args.guidance == 5 and args.lr == 0.01 for args in runs)
    assert {(args.task, args.reward, args.iters) for args in runs} == {
        ("latent", "style", 200), ("conditioning", "clip", 100), ("finetune", "aesthetic", 100)
    }
    assert all(args.gradient_checkpointing and args.resolution == 512 and args.clip_model for args in runs)


@pytest.mark.parametrize("preset", [None, "sd_cost_gpu.yaml"])
def test_sd_cost_plans_one_process_per_unet_setting(preset):
    """Each UNet checkpointing setting is one `sdo cost` process measuring every row of the
    block: its parameter types, step counts and variants with their options."""
    names = ["config.yaml", "sd_cost.yaml"] + ([preset] if preset else [])
    block = _merged(*names)["sd_cost"]
    commands = _planned_commands(ROOT / "config" / (preset or "sd_cost.yaml"), target="sd_cost")
    parser = build_parser()
    jobs = [parser.parse_args(words) for words in commands]
    assert len(jobs) == len(block["unet_checkpointing"])
    assert {args.gradient_checkpointing for args in jobs} == set(block["unet_checkpointing"])
    for args in jobs:
        assert args.command == "cost" and args.model == "sd-random:1.5" and args.sweep
        assert args.resolution == block["resolution"] and args.device == block["device"] and args.dtype == block["dtype"]
        assert args.wrt == block["wrt"] and args.steps == block["steps"]
        assert {name: {"method": method, **options} for name, method, options in args.variants} == block["variants"]


def test_sd_keys_are_checked():
    config = _merged("config.yaml", "paper.yaml")
    config["runs"]["tasks"]["latent"]["dtype"] = "float8"
    with pytest.raises(ConfigError, match="runs.tasks.latent.dtype.*float32, float16 or bfloat16"):
        check_config(config, base=ROOT)
    config = _merged("config.yaml", "sd_cost.yaml")
    config["sd_cost"]["resolution"] = 60
    with pytest.raises(ConfigError, match="sd_cost.resolution"):
        check_config(config, base=ROOT)
