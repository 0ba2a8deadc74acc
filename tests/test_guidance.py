"""Training-free guidance as an experiment (`evals.guide`): its seconds are the device clock's
(`sdo.timing.timed`, as a run's are), it keeps to its memory budget as a run does, and its table
(`evals.tables.guidance_table`) holds a model whose domain measures no distance to real data."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from evals.experiment import GuideSpec, guide
from evals.tables import evaluations_table, guidance_table


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


def test_the_guided_pass_is_timed_by_the_device_clock(tmp_path, monkeypatch):
    """The seconds recorded are what `timed` measured around the guided pass, and nothing else."""
    calls = []

    def timed(call, device="cpu"):
        calls.append(device)
        return 12.5, call()

    monkeypatch.setattr("evals.guide.timed", timed)
    record = guide(GuideSpec(steps=2, batch=2, device="cpu", out=tmp_path / "g.json"))
    assert record["status"] == "ok", record.get("reason")
    assert record["seconds"] == 12.5 and len(calls) == 1 and str(calls[0]) == "cpu"
    assert record["nfe_forward"] > 0 and record["nfe_backward"] > 0
    assert json.loads((tmp_path / "g.json").read_text())["seconds"] == 12.5


def test_an_allocation_past_the_budget_ends_the_guided_pass_as_out_of_memory(tmp_path):
    """A metric that asks for 4 GiB under a 2.5 GiB budget: the record says out_of_memory."""
    greedy = tmp_path / "greedy.py"
    greedy.write_text(
        "import torch\n\ndef hog(images):\n    block = torch.ones(2**30)\n"
        "    return images.mean(dim=(1, 2, 3)) + block[0]\n"
    )
    spec = GuideSpec(steps=2, batch=2, metrics=[f"{greedy}:hog"], mem_mb=2500, device="cpu", out=tmp_path / "g.json")
    record = guide(spec)
    assert record["status"] == "out_of_memory", record.get("reason")
    assert json.loads((tmp_path / "g.json").read_text())["status"] == "out_of_memory"


def _guided(path, seconds: float) -> str:
    """A guided record of an RGB model: a reward, no target accuracy and no nn_distance."""
    config = {"model": "sd:tiny", "steps": 4, "seed": 0, "repeats": 1, "scale": 0.2, "task_options": {}}
    record = {
        "status": "ok",
        "variant": "guidance_r1",
        "config": config,
        "final": {"reward_mean": 0.25, "fid": None},
        "seconds": seconds,
        "nfe_forward": 4,
        "nfe_backward": 4,
        "device": "cpu",
    }
    path.write_text(json.dumps(record))
    return str(path)


def test_the_guidance_table_takes_a_model_without_a_distance_to_real_data(tmp_path):
    run = {
        "status": "ok",
        "variant": "shortcut",
        "device": "cpu",
        "config": {"model": "sd:tiny", "task": "latent", "steps": 4, "seed": 0},
        "evaluations": [
            {"iter": 0, "seconds": 0.0, "reward": 0.1, "nfe": 0},
            {"iter": 1, "seconds": 1.5, "reward": 0.2, "nfe": 6},
            {"iter": 2, "seconds": 3.0, "reward": 0.3, "nfe": 12},
        ],
    }
    evaluations = evaluations_table([(tmp_path / "run.json", run)])
    assert "nn_distance" not in evaluations and "target_accuracy" not in evaluations
    table = guidance_table([_guided(tmp_path / "g.json", 2.0)], evaluations)
    assert len(table) == 1
    row = table.iloc[0]
    assert row["variant"] == "shortcut" and row["optimised_iter"] == 1 and row["optimised_reward"] == 0.2
    assert row["reward"] == 0.25 and row["seconds"] == 2.0 and row["nfe"] == 8
    for column in ("nn_distance", "target_accuracy", "optimised_nn_distance", "optimised_target_accuracy"):
        assert pd.isna(row[column]), column
