"""The Stable Diffusion configs plan, and every command they generate parses: the paper's
experiments (`config/paper.yaml`, its model found in a local Hugging Face cache) and the cost
sweep's CPU defaults and GPU preset."""

from __future__ import annotations

import os
from pathlib import Path

import huggingface_hub.constants
import pytest
from hf_cache import cache_as
from test_config import _planned_commands
from tiny_pipelines import build_tiny_sd as build_tiny

from evals.cli import build_parser
from evals.config import ConfigError, check_config, layered

ROOT = Path(__file__).resolve().parents[1]
PAPER_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"


def _merged(*names: str) -> dict:
    """The config files layered as the Snakefile layers a --configfile over the default."""
    return layered([ROOT / "config" / name for name in names])


@pytest.fixture(scope="module")
def hf_cache(tmp_path_factory):
    """A Hugging Face cache holding a tiny pipeline under the paper's model id."""
    root = tmp_path_factory.mktemp("hf")
    return cache_as(build_tiny(root / "tiny"), PAPER_MODEL, root / "cache")


def test_paper_config_plans_runs_on_stable_diffusion(hf_cache, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hf_cache))
    check_config(_merged("config.yaml", "paper.yaml"), base=ROOT)
    parser = build_parser()
    env = {**os.environ, "HF_HUB_CACHE": str(hf_cache)}
    runs = [parser.parse_args(words) for words in _planned_commands(ROOT / "config" / "paper.yaml", env=env)]
    runs = [args for args in runs if args.command == "run"]
    assert {args.task for args in runs} == {"latent", "conditioning", "finetune"}
    assert all(args.model == f"sd:{PAPER_MODEL}" and args.steps == 50 and args.cfg_scale == 5 and args.lr == 0.01 for args in runs)
    assert {(args.task, args.reward, args.iters) for args in runs} == {
        ("latent", "style", 200), ("conditioning", "clip", 100), ("finetune", "aesthetic", 100)
    }
    for args in runs:
        options = dict(args.model_options)
        assert options["gradient_checkpointing"] is True and options["resolution"] == 512
        assert dict(args.reward_options)["clip_model"].startswith("weights/")


def test_a_model_that_is_not_there_is_refused_before_any_job(tmp_path, monkeypatch):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(ConfigError, match=f"model_options.sd:{PAPER_MODEL}.*not found.*Hugging Face cache"):
        check_config(_merged("config.yaml", "paper.yaml"), base=ROOT)


@pytest.mark.parametrize("preset", [None, "sd_cost_gpu.yaml"])
def test_sd_cost_plans_one_process_per_model_and_unet_setting(preset):
    """Each model and denoiser checkpointing setting is one `sdo cost` process measuring every
    row of the block: its parameter types, step counts and variants with their options."""
    names = ["config.yaml", "sd_cost.yaml"] + ([preset] if preset else [])
    block = _merged(*names)["sd_cost"]
    commands = _planned_commands(ROOT / "config" / (preset or "sd_cost.yaml"), target="sd_cost")
    parser = build_parser()
    jobs = [(parser.parse_args(words), words) for words in commands]
    assert len(jobs) == len(block["unet_checkpointing"]) * len(block["models"])
    assert {("gradient_checkpointing", True) in args.model_options for args, _ in jobs} == set(block["unet_checkpointing"])
    for args, words in jobs:
        model = block["models"][args.model] or {}
        options = {**block["model_options"], **model.get("model_options", {})}
        assert args.command == "cost" and args.sweep and args.device == block["device"]
        assert {k: v for k, v in args.model_options if k != "gradient_checkpointing"} == options
        assert args.wrt == block["wrt"] and args.steps == model.get("steps", block["steps"])
        names = model.get("variants", list(block["variants"]))
        assert {name: {"method": method, **options} for name, method, options in args.variants} == {
            name: block["variants"][name] for name in names
        }
        assert ("--no-plain-loop" not in words) == model.get("plain_loop", block.get("plain_loop", True))


def test_sd_keys_are_checked():
    config = _merged("config.yaml", "sd_cost.yaml")
    config["sd_cost"]["model_options"] = {"dtype": "float8"}
    with pytest.raises(ConfigError, match="sd_cost.models.random:sd1.5.*float8"):
        check_config(config, base=ROOT)
    config = _merged("config.yaml", "sd_cost.yaml")
    config["sd_cost"]["models"] = {"random:sd9": {}}
    with pytest.raises(ConfigError, match="unknown architecture 'sd9'"):
        check_config(config, base=ROOT)


def test_a_layer_naming_another_reward_drops_the_lower_layers_reward_options():
    """Snakemake's merge would hand the default's digits options to a user's reward; a task that
    names another reward starts from none, and one that keeps its reward keeps them."""
    base = {"runs": {"tasks": {"finetune": {"reward": "classifier", "reward_options": {"target": 3}, "iters": 10}}}}
    other = layered([base, {"runs": {"tasks": {"finetune": {"reward": "config/rewards/saturation.py:saturation"}}}}])
    assert "reward_options" not in other["runs"]["tasks"]["finetune"] and other["runs"]["tasks"]["finetune"]["iters"] == 10
    same = layered([base, {"runs": {"tasks": {"finetune": {"reward": "classifier", "iters": 20}}}}])
    assert same["runs"]["tasks"]["finetune"]["reward_options"] == {"target": 3}
    replaced = layered([base, {"runs": {"tasks": {"finetune": {"reward_options": {"target": 5}}}}}])
    assert replaced["runs"]["tasks"]["finetune"]["reward_options"] == {"target": 5}
