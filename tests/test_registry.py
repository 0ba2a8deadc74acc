"""Plug-ins are one file each: the model family, reward and task written out in
docs/extending.md register themselves from their own files and run through the command line,
and each registry lists exactly what the code registers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel

from evals.cli import main
from evals.rewards import REWARDS
from sdo.estimators import ESTIMATORS
from sdo.models import MODELS, resolve
from sdo.samplers import SAMPLERS
from sdo.tasks import TASKS

ROOT = Path(__file__).resolve().parents[1]


def _blocks() -> dict[str, str]:
    """The python code blocks of docs/extending.md, by the file name in their first line."""
    text = (ROOT / "docs" / "extending.md").read_text()
    blocks = re.findall(r"```python\n# (\S+)\n(.*?)```", text, flags=re.DOTALL)
    return {name: code for name, code in blocks}


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("plugins")
    files = {}
    for name, code in _blocks().items():
        files[name] = directory / name
        files[name].write_text(code)
    assert set(files) == {"ddpm_backend.py", "contrast_reward.py", "two_prompt_task.py"}
    return files


@pytest.fixture(scope="module")
def ddpm_dir(tmp_path_factory) -> Path:
    """A tiny unconditional DDPM pipeline saved in diffusers' layout."""
    torch.manual_seed(0)
    unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16), layers_per_block=1,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       norm_num_groups=4, attention_head_dim=4)
    directory = tmp_path_factory.mktemp("ddpm")
    DDPMPipeline(unet=unet, scheduler=DDPMScheduler(num_train_timesteps=1000)).save_pretrained(directory)
    return directory


def _record(path: Path) -> dict:
    return json.loads(path.read_text())


def test_a_model_family_from_one_file_runs_from_a_bare_directory(plugins, ddpm_dir, tmp_path):
    out = tmp_path / "ddpm.json"
    code = main(["--threads", "1", "--plugin", str(plugins["ddpm_backend.py"]), "run", "--model", str(ddpm_dir),
                 "--task", "latent", "--method", "shortcut", "--steps", "3", "--iters", "2", "--batch", "2",
                 "--reward", "mean_square", "--device", "cpu", "--out", str(out)])
    record = _record(out)
    assert code == 0 and record["status"] == "ok", record.get("reason")
    assert resolve(str(ddpm_dir)).cls.prefix == "ddpm" and "ddpm" in MODELS
    out = tmp_path / "lora.json"
    code = main(["--threads", "1", "--plugin", str(plugins["ddpm_backend.py"]), "run", "--model", f"ddpm:{ddpm_dir}",
                 "--task", "finetune", "--method", "full", "--steps", "2", "--iters", "1", "--batch", "2",
                 "--task-option", "lora_rank=2", "--task-option", "eval_samples=2", "--task-option", "monitor_samples=2",
                 "--reward", "mean_square", "--device", "cpu", "--out", str(out)])
    assert code == 0 and _record(out)["status"] == "ok", _record(out).get("reason")


def test_a_reward_and_a_task_from_their_own_files(plugins, tmp_path):
    out = tmp_path / "two.json"
    code = main(["--threads", "1", "--plugin", str(plugins["contrast_reward.py"]), "--plugin",
                 str(plugins["two_prompt_task.py"]), "run", "--task", "two_prompt_latent", "--task-option",
                 'prompts=["3", "8"]', "--reward", "contrast", "--reward-option", "power=2", "--method", "shortcut",
                 "--steps", "3", "--iters", "2", "--batch", "2", "--out", str(out)])
    record = _record(out)
    assert code == 0 and record["status"] == "ok", record.get("reason")
    assert "two_prompt_latent" in TASKS and TASKS["two_prompt_latent"].wrt == "latent"
    out = tmp_path / "bad.json"
    main(["--plugin", str(plugins["contrast_reward.py"]), "run", "--method", "shortcut", "--steps", "2", "--iters", "1",
          "--reward", "contrast", "--reward-option", "power=-1", "--out", str(out)])
    assert "power must be positive, got -1" in _record(out)["reason"]


def test_the_registries_hold_the_built_in_plug_ins():
    assert {"ddim", "flow_euler"} <= set(SAMPLERS)
    assert {"full", "truncated", "adjoint", "doodl", "shortcut", "shortcut_warm", "drtune", "refl"} <= set(ESTIMATORS)
    assert {"latent", "conditioning", "finetune"} <= set(TASKS)
    assert {"embedded", "embedded-flow", "sd"} <= set(MODELS)
    assert {("classifier", "digits"), ("clip", "rgb"), ("style", "digits"), ("style", "rgb")} <= set(REWARDS)
    from sdo.samplers.base import NEEDS

    for cls in ESTIMATORS.values():
        assert set(cls.needs) <= set(NEEDS), cls.name
