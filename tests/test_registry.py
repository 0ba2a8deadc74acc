"""Plug-ins are one file each: the model family, reward, task, sampler and estimator written out
in docs/extending.md register themselves from their own files and run through the command line
as the page shows; the sampler steps as its diffusers scheduler does and the estimator equals the
shortcut's rules it generalises; each registry lists what the code registers and refuses a name
taken by another file or an entry of the wrong kind; a model source that names nothing loadable
is refused saying why."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from conftest import relative_error, smooth_loss, tiny_problem, tiny_problem_parts
from examples import EXAMPLES, write_examples

from evals.cli import main
from evals.plugins import PluginError, import_plugin
from evals.rewards import REWARDS
from sdo.estimators import ESTIMATORS, make_estimator
from sdo.models import MODELS, resolve
from sdo.samplers import SAMPLERS
from sdo.tasks import TASKS


@pytest.fixture(scope="module")
def plugins(tmp_path_factory) -> dict[str, Path]:
    files = write_examples(tmp_path_factory.getbasetemp())
    assert set(files) == EXAMPLES
    return files


def _record(path: Path) -> dict:
    return json.loads(path.read_text())


def _run(*words: str) -> int:
    return main(["--threads", "1", *words, "--device", "cpu"])


def test_a_model_family_of_ones_own_runs_from_its_safetensors(plugins, tmp_path):
    import_plugin(plugins["my_denoiser.py"])
    family = MODELS["mine"]
    module = sys.modules[family.__module__]
    torch.manual_seed(0)
    module.save(module.TinyDenoiser(channels=3, width=8), tmp_path / "weights", size=8)
    source = f"mine:{tmp_path / 'weights'}"
    assert resolve(source).cls is family
    out = tmp_path / "mine.json"
    code = _run(
        "--plugin",
        str(plugins["my_denoiser.py"]),
        "run",
        "--model",
        source,
        "--task",
        "latent",
        "--method",
        "shortcut",
        "--steps",
        "3",
        "--iters",
        "2",
        "--batch",
        "2",
        "--reward",
        "mean_square",
        "--out",
        str(out),
    )
    record = _record(out)
    assert code == 0 and record["status"] == "ok", record.get("reason")
    assert record["sampler"] == "ddim" and len(record["iterations"]) == 2
    out = tmp_path / "tuned.json"
    code = _run(
        "--plugin",
        str(plugins["my_denoiser.py"]),
        "run",
        "--model",
        source,
        "--task",
        "finetune",
        "--method",
        "full",
        "--task-option",
        "lora_rank=0",
        "--task-option",
        "eval_samples=2",
        "--task-option",
        "monitor_samples=2",
        "--steps",
        "2",
        "--iters",
        "1",
        "--batch",
        "2",
        "--reward",
        "mean_square",
        "--out",
        str(out),
    )
    assert code == 0 and _record(out)["status"] == "ok", _record(out).get("reason")
    out = tmp_path / "missing.json"
    code = _run(
        "--plugin",
        str(plugins["my_denoiser.py"]),
        "run",
        "--model",
        f"mine:{tmp_path / 'nowhere'}",
        "--method",
        "shortcut",
        "--steps",
        "2",
        "--iters",
        "1",
        "--reward",
        "mean_square",
        "--out",
        str(out),
    )
    assert code == 1 and "model.safetensors not found" in _record(out)["reason"]


def test_a_reward_and_a_task_from_their_own_files(plugins, tmp_path):
    out = tmp_path / "two.json"
    code = _run(
        "--plugin",
        str(plugins["contrast_reward.py"]),
        "--plugin",
        str(plugins["two_prompt_task.py"]),
        "run",
        "--task",
        "two_prompt_latent",
        "--task-option",
        'prompts=["3", "8"]',
        "--reward",
        "contrast",
        "--reward-option",
        "power=2",
        "--method",
        "shortcut",
        "--steps",
        "3",
        "--iters",
        "2",
        "--batch",
        "2",
        "--out",
        str(out),
    )
    record = _record(out)
    assert code == 0 and record["status"] == "ok", record.get("reason")
    assert "two_prompt_latent" in TASKS and TASKS["two_prompt_latent"].wrt == "latent"
    out = tmp_path / "bad.json"
    _run(
        "--plugin",
        str(plugins["contrast_reward.py"]),
        "run",
        "--method",
        "shortcut",
        "--steps",
        "2",
        "--iters",
        "1",
        "--reward",
        "contrast",
        "--reward-option",
        "power=-1",
        "--out",
        str(out),
    )
    assert "power must be positive, got -1" in _record(out)["reason"]


def test_the_sampler_example_steps_as_its_diffusers_scheduler_and_runs(plugins, tmp_path):
    """DDIM on trailing timesteps: the chain's float64 sample equals a loop over diffusers'
    DDIMScheduler.step with timestep_spacing='trailing' (whose alphas are float32), from t = 999."""
    import_plugin(plugins["ddim_trailing.py"])
    chain, latent, cond = tiny_problem_parts(5, sampler="ddim_trailing", cfg_scale=1.0)
    scheduler = chain.diffusers_scheduler()
    assert chain.timesteps == [999, 799, 599, 399, 199] == scheduler.timesteps.tolist()
    with torch.no_grad():
        x = latent
        for t in scheduler.timesteps:
            out = chain.guided(x, torch.full((len(x),), float(t), dtype=x.dtype), cond)
            x = scheduler.step(out, t, x).prev_sample
        ours = chain.trajectory(latent, cond)[0]
    assert relative_error([ours], [x]) < 1e-6
    assert SAMPLERS["ddim_trailing"].capabilities_for(None, {}).deterministic
    out = tmp_path / "trailing.json"
    code = _run(
        "--plugin",
        str(plugins["ddim_trailing.py"]),
        "run",
        "--task",
        "latent",
        "--sampler",
        "ddim_trailing",
        "--method",
        "shortcut",
        "--steps",
        "3",
        "--iters",
        "2",
        "--batch",
        "2",
        "--out",
        str(out),
    )
    record = _record(out)
    assert code == 0 and record["status"] == "ok" and record["sampler"] == "ddim_trailing", record.get("reason")


def test_the_estimator_example_spans_the_shortcut_s_last_and_all(plugins, tmp_path):
    """tail = 1 gives the shortcut's at=last gradient and tail = T its at=all, exactly, on a tiny
    float64 chain; through the command line it runs on the conditioning and is not applicable to
    the latent."""
    import_plugin(plugins["shortcut_tail.py"])
    steps, loss = 4, smooth_loss()
    for tail, at in ((1, "last"), (steps, "all"), (steps + 3, "all")):
        for wrt in ("cond", "weights"):
            ours = make_estimator("shortcut_tail", tail=tail)(tiny_problem(wrt, steps), loss)
            theirs = make_estimator("shortcut", at=at)(tiny_problem(wrt, steps), loss)
            assert relative_error(ours.grads, theirs.grads) < 1e-12, (tail, wrt)
            assert (ours.nfe_forward, ours.nfe_backward) == (theirs.nfe_forward, theirs.nfe_backward)
    two = make_estimator("shortcut_tail", tail=2)(tiny_problem("cond", steps), loss)
    assert two.graph_steps == [2, 3] and two.nfe_backward == 2
    with pytest.raises(ValueError, match="tail must be >= 1, got 0"):
        make_estimator("shortcut_tail", tail=0)
    out = tmp_path / "tail.json"
    code = _run(
        "--plugin",
        str(plugins["shortcut_tail.py"]),
        "run",
        "--task",
        "conditioning",
        "--method",
        "shortcut_tail",
        "--option",
        "tail=2",
        "--steps",
        "3",
        "--iters",
        "2",
        "--batch",
        "2",
        "--task-option",
        "eval_samples=2",
        "--task-option",
        "monitor_samples=2",
        "--out",
        str(out),
    )
    assert code == 0 and _record(out)["status"] == "ok", _record(out).get("reason")
    out = tmp_path / "latent.json"
    code = _run(
        "--plugin",
        str(plugins["shortcut_tail.py"]),
        "run",
        "--method",
        "shortcut_tail",
        "--steps",
        "3",
        "--iters",
        "1",
        "--batch",
        "2",
        "--out",
        str(out),
    )
    assert code == 1 and _record(out)["status"] == "not_applicable"


def test_a_name_taken_by_another_file_is_refused_naming_both(plugins, tmp_path):
    import_plugin(plugins["contrast_reward.py"])
    copy = tmp_path / "contrast_again.py"
    copy.write_text(plugins["contrast_reward.py"].read_text())
    with pytest.raises(
        PluginError,
        match=f"registered twice: by {re.escape(str(plugins['contrast_reward.py']))} and by {re.escape(str(copy))}",
    ):
        import_plugin(copy)


def test_the_registries_hold_the_built_in_plug_ins():
    assert {"ddim", "euler", "euler_ancestral", "dpmpp_2m", "unipc", "flow_euler", "flow_sde"} <= set(SAMPLERS)
    assert {"full", "truncated", "adjoint", "doodl", "shortcut", "shortcut_warm", "drtune", "refl"} <= set(ESTIMATORS)
    assert {"latent", "conditioning", "finetune"} <= set(TASKS)
    assert {"embedded", "embedded-flow", "sd", "sdxl", "sd3", "flux", "pixel"} <= set(MODELS)
    rgb = {
        "clip",
        "aesthetic",
        "style",
        "mean_square",
        "pickscore",
        "hpsv2",
        "imagereward",
        "style_gram",
        "aesthetic_target",
        "clip_guide",
    }
    assert {(name, "rgb") for name in rgb} | {
        (name, "digits") for name in ("classifier", "style", "inpaint", "superres")
    } <= set(REWARDS)
    from sdo.samplers.base import NEEDS

    for cls in ESTIMATORS.values():
        assert set(cls.needs) <= set(NEEDS), cls.name


def test_an_entry_of_the_wrong_kind_is_refused_naming_the_kind():
    """The registry's base-class check (and the decorators' own) refuse before anything is registered."""
    from evals.domains import DOMAINS
    from sdo.estimators import register_estimator
    from sdo.models import register_model
    from sdo.registry import Registry
    from sdo.samplers import register_sampler

    widgets = Registry("widget", int)
    with pytest.raises(TypeError, match=r"widget 'text' must be a int, got 'seven'"):
        widgets.register("text", "seven")
    with pytest.raises(TypeError, match=r"widget 'class' must be a int, got <class 'str'>"):
        widgets.register("class", str)
    assert widgets.register("bool", bool) is bool and widgets.register("seven", 7) == 7 and len(widgets) == 2
    for registry, words in (
        (TASKS, "task 'odd' must be a Task"),
        (REWARDS, "reward 'odd' must be a RewardEntry"),
        (DOMAINS, "image domain 'odd' must be a Domain"),
    ):
        with pytest.raises(TypeError, match=re.escape(words)):
            registry.register("odd", lambda images: images)
        assert "odd" not in registry
    for decorate, words in (
        (register_model, "must be a DiffusionModel subclass"),
        (register_sampler, "must be a Chain subclass"),
        (register_estimator, "must be an Estimator subclass"),
    ):
        with pytest.raises(TypeError, match=words):
            decorate(str)


def test_a_model_index_that_is_not_json_is_named(tmp_path):
    index = tmp_path / "model_index.json"
    index.write_text('{"_class_name": "StableDiffusionPipeline",')
    with pytest.raises(ValueError) as caught:
        resolve(str(tmp_path))
    assert f"{index} is not valid JSON" in str(caught.value) and "names the pipeline class" in str(caught.value)
    index.write_text('{"unet": ["diffusers", "UNet2DConditionModel"]}')
    with pytest.raises(ValueError, match=r"names no pipeline class \(_class_name\)"):
        resolve(str(tmp_path))


@pytest.mark.parametrize("source", ["sd:", "embedded:"])
def test_a_prefix_with_nothing_after_its_colon_is_refused(source):
    prefix = source[:-1]
    with pytest.raises(ValueError) as caught:
        resolve(source)
    message = str(caught.value)
    assert f"model {source!r} names no location after the colon" in message and f"{prefix}:<directory" in message
