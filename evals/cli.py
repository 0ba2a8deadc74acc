"""The `sdo` command: parses flags into an experiment spec and calls `evals.experiment`.

Exit status: 0 when the record's status is `ok` (or, with `--sweep`, whenever the record was
written), 1 when the run could not be done as asked (the record still says why), 2 for bad
usage.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from evals import experiment
from sdo.estimators import ESTIMATORS, PARAMETER_KINDS
from sdo.models import store
from sdo.models.base import NULL_PROMPT
from sdo.tasks import TASKS

log = logging.getLogger("sdo")


def _option(text: str) -> tuple[str, object]:
    """`key=value` with the value read as JSON where it parses (numbers, booleans), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"estimator option must look like key=value, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _prompt(text: str) -> str:
    """A prompt; `none` (or an empty string) is the null prompt."""
    return NULL_PROMPT if text in ("none", "") else text


def _sweep_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", action="store_true",
                        help="exit 0 whenever the record is written, whatever its status (for workflows)")


MODEL_HELP = "embedded (default), sd:<directory or model id>, or sd-random:<version> (random weights: cost only)"


def _model_flags(parser: argparse.ArgumentParser) -> None:
    """How a Stable Diffusion model is loaded (`experiment.ModelOptions`)."""
    parser.add_argument("--resolution", type=_positive, default=None, help="SD: image side in pixels (default: the model's)")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32", help="SD: networks' dtype")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="SD: recompute UNet and VAE block activations")
    parser.add_argument("--attention-slicing", action="store_true", help="SD: attention in slices of heads")
    parser.add_argument("--vae-slicing", action="store_true", help="SD: decode one image at a time")
    parser.add_argument("--allow-download", action="store_true", help="SD: fetch missing weights from the Hugging Face hub")


def _sampling_flags(parser: argparse.ArgumentParser) -> None:
    """What is sampled and how it is scored: shared by `run` and `guide`."""
    parser.add_argument("--model", default="embedded", help=MODEL_HELP)
    parser.add_argument("--steps", type=_positive, required=True, help="DDIM steps T")
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="one or more seeds, run one after another in this process (one import, one model load)")
    parser.add_argument("--batch", type=_positive, default=8)
    parser.add_argument("--reward", default="classifier",
                        help="embedded: classifier, style, inpaint, superres; SD: clip, aesthetic, style; "
                             "or a callable 'package.module:function' / 'file.py:function'")
    parser.add_argument("--target", type=int, default=3, help="digit the classifier reward asks for")
    parser.add_argument("--reference-index", type=int, default=0, help="held-out digit used by style, inpaint, superres")
    parser.add_argument("--metric", "--metrics", dest="metrics", action="extend", nargs="+", default=[], metavar="MODULE:FUNCTION",
                        help="extra evaluation-only metric images -> per-sample scores (repeatable)")
    parser.add_argument("--inception-weights", type=Path, default=None, help="local Inception-v3 weights: adds Inception FID")
    parser.add_argument("--clip-model", type=Path, default=None, help="local CLIP model directory: adds CLIP score")
    parser.add_argument("--aesthetic-head", type=Path, default=None, help="SD aesthetic reward: LAION predictor head weights")
    parser.add_argument("--style-image", type=Path, default=None, help="SD style reward: the style image")
    parser.add_argument("--reference-images", type=Path, default=None, help="SD: image folder for Inception FID")
    parser.add_argument("--reward-prompt", default="", help="SD clip reward: its text (default: --prompt)")
    parser.add_argument("--reward-tolerance", type=float, default=1e-2, help="differentiability check tolerance")
    parser.add_argument("--prompt", type=_prompt, default=NULL_PROMPT, help="conditioning prompt (embedded: a digit 0-9), or 'none' (default)")
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--eta", type=float, default=0.0)
    parser.add_argument("--models", type=Path, default=store.DEFAULT_DIR)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    parser.add_argument("--out", type=Path, required=True,
                        help="record PATH.json (a PATH.png grid goes beside it); {seed} in PATH stands for the seed, "
                             "required with several seeds")
    _model_flags(parser)
    _sweep_flag(parser)


def _variant(text: str) -> tuple[str, str, dict]:
    """`name=method[:key=value,...]`, options read as `--option` reads them."""
    name, sep, rest = text.partition("=")
    method, _, options = rest.partition(":")
    if not sep or not name or method not in ESTIMATORS:
        raise argparse.ArgumentTypeError(
            f"variant must look like NAME=METHOD[:KEY=VALUE,...] with METHOD one of {', '.join(sorted(ESTIMATORS))}, got {text!r}"
        )
    return name, method, dict(_option(option) for option in options.split(",") if option)


def _bench_problem_flags(parser: argparse.ArgumentParser) -> None:
    """The benchmark problem and its model: shared by `bench` and `cost`."""
    parser.add_argument("--model", default="embedded", help=MODEL_HELP)
    parser.add_argument("--batch", type=_positive, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--guidance", type=float, default=1.0)
    parser.add_argument("--rounds", type=_positive, default=5, help="timed rounds (sampling pass, then gradient) after a warm-up")
    parser.add_argument("--no-plain-loop", dest="plain_loop", action="store_false",
                        help="do not time the plain diffusers loop beside full and the shortcut")
    parser.add_argument("--models", type=Path, default=store.DEFAULT_DIR)
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")
    parser.add_argument("--clip-model", type=Path, default=None, help="SD: loss minus CLIP similarity (default: mean square)")
    parser.add_argument("--reward-prompt", default="", help="SD: the CLIP text (default: the model's first prompt)")
    parser.add_argument("--lora-rank", type=int, default=None, help="weights: LoRA rank (default 0, all weights; SD: 4)")
    _model_flags(parser)
    _sweep_flag(parser)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=_positive, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an embedded model and save it as safetensors")
    train.add_argument("kind", choices=sorted(store.KINDS))
    train.add_argument("--out", type=Path, default=store.DEFAULT_DIR, help="directory for <kind>.safetensors/.json")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--train-steps", type=_positive, default=2500, help="denoiser optimiser steps")
    train.add_argument("--epochs", type=_positive, default=60, help="classifier epochs")

    quality = commands.add_parser("quality", help="label accuracy and FID of the base model's samples")
    quality.add_argument("--models", type=Path, default=store.DEFAULT_DIR)
    quality.add_argument("--steps", type=_positive, default=50)
    quality.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    quality.add_argument("--per-label", type=_positive, default=50)
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--device", default="auto")
    quality.add_argument("--out", type=Path, required=True, help="record PATH.json (a PATH.png grid goes beside it)")

    run = commands.add_parser("run", help="optimise a task with one gradient estimator and write a JSON record")
    run.add_argument("--task", choices=sorted(TASKS), default="latent")
    run.add_argument("--method", choices=sorted(ESTIMATORS), required=True)
    run.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                     help="estimator option, e.g. checkpoint=true or at=all (repeatable)")
    run.add_argument("--variant", default=None, help="name of this estimator configuration in tables (default: the method)")
    run.add_argument("--iters", type=_positive, required=True, help="optimisation iterations")
    run.add_argument("--lr", type=float, default=None, help="learning rate (default: the task's)")
    run.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), metavar=("B1", "B2"), help="Adam's betas")
    run.add_argument("--renormalize", action="store_true", help="latent task: DOODL's latent renormalisation")
    run.add_argument("--lora-rank", type=int, default=4, help="finetune task: LoRA rank, 0 for all UNet weights")
    run.add_argument("--eval-samples", type=_positive, default=100, help="conditioning/finetune: samples for final metrics")
    run.add_argument("--eval-every", type=int, default=2, help="evaluate on held-out noise every N iterations (0: start and end)")
    run.add_argument("--monitor-samples", type=_positive, default=32, help="held-out samples per evaluation during the run")
    _sampling_flags(run)

    guide = commands.add_parser("guide", help="training-free guidance on the latent task's latents: one guided pass")
    guide.add_argument("--scale", type=float, default=0.2, help="guidance step size")
    guide.add_argument("--schedule", choices=["constant", "increase", "decrease"], default="constant")
    guide.add_argument("--repeats", type=_positive, default=1, help="FreeDoM time-travel repeats per step")
    guide.add_argument("--variant", default=None, help="name in tables (default: guidance_r<repeats>)")
    _sampling_flags(guide)

    bench = commands.add_parser("bench", help="fidelity and cost of one estimator on the benchmark problem")
    bench.add_argument("--wrt", choices=PARAMETER_KINDS, required=True, help="parameter type to differentiate")
    bench.add_argument("--method", choices=sorted(ESTIMATORS), required=True)
    bench.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE")
    bench.add_argument("--variant", default=None, help="name of this estimator configuration in tables (default: the method)")
    bench.add_argument("--steps", type=_positive, required=True)
    bench.add_argument("--reference", type=Path, default=None, help="full gradient (safetensors) to compare with")
    bench.add_argument("--save-gradient", type=Path, default=None, help="also write this gradient as safetensors")
    bench.add_argument("--out", type=Path, required=True, help="row PATH.json")
    _bench_problem_flags(bench)

    cost = commands.add_parser(
        "cost", help="cost of several estimator variants x parameter types x T in one process (the model is built once)"
    )
    cost.add_argument("--variant", dest="variants", type=_variant, action="append", required=True,
                      metavar="NAME=METHOD[:KEY=VALUE,...]", help="a named estimator variant, e.g. draft_1=truncated:k=1 (repeatable)")
    cost.add_argument("--wrt", choices=PARAMETER_KINDS, nargs="+", required=True, help="parameter types to differentiate")
    cost.add_argument("--steps", type=_positive, nargs="+", required=True, help="DDIM steps T")
    cost.add_argument("--out-dir", type=Path, required=True, help="rows go to OUT_DIR/<wrt>/T<steps>/<variant>.json")
    _bench_problem_flags(cost)
    return parser


def _spec(cls, args: argparse.Namespace, **renamed):
    """The dataclass `cls` from the parsed flags it has fields for."""
    names = {f.name for f in cls.__dataclass_fields__.values()}
    values = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**values, **renamed})


def _train(args) -> dict:
    from sdo.models import train

    if args.kind == "classifier":
        model, accuracy = train.train_classifier(epochs=args.epochs, seed=args.seed)
        store.save(model, "classifier", args.out, metrics={"held_out_accuracy": accuracy})
    else:
        start = time.perf_counter()
        model = train.train_denoiser(steps=args.train_steps, seed=args.seed)
        metrics = {"train_seconds": time.perf_counter() - start, "train_steps": args.train_steps}
        store.save(model, "denoiser", args.out, metrics=metrics)
    return {"status": "ok"}


def _outcome(rows: list[dict], name) -> dict:
    """One status for several records: ok when every one is, else the first other status with
    every record that is not ok (`name(record)` says which)."""
    failed = [row for row in rows if row["status"] != "ok"]
    if not failed:
        return {"status": "ok"}
    reasons = "; ".join(f"{name(row)}: {row['status']}" for row in failed)
    return {"status": failed[0]["status"], "reason": f"{len(failed)} of {len(rows)} not ok ({reasons})"}


def _each_seed(args, experiment_for_seed) -> dict:
    """`experiment_for_seed(seed, out)` for each `--seed`, `{seed}` in `--out` replaced by it."""
    records = [experiment_for_seed(seed, Path(str(args.out).replace("{seed}", str(seed)))) for seed in args.seed]
    return _outcome(records, lambda record: f"seed {record['config']['seed']}") if len(records) > 1 else records[0]


def _run(args) -> dict:
    return _each_seed(
        args, lambda seed, out: experiment.run(_spec(experiment.RunSpec, args, options=dict(args.option), seed=seed, out=out))
    )


def _bench(args) -> dict:
    return experiment.bench(_spec(experiment.BenchSpec, args, options=dict(args.option)))


def _cost(args) -> dict:
    specs = [
        _spec(experiment.BenchSpec, args, wrt=wrt, steps=steps, method=method, options=options, variant=name,
              out=args.out_dir / wrt / f"T{steps}" / f"{name}.json")
        for wrt in args.wrt
        for steps in args.steps
        for name, method, options in args.variants
    ]
    return _outcome(experiment.bench_rows(specs), lambda row: f"{row['wrt']} T={row['steps']} {row['variant']}")


def _quality(args) -> dict:
    return experiment.quality(_spec(experiment.QualitySpec, args))


def _guide(args) -> dict:
    from evals.guide import GuideSpec, guide

    return _each_seed(args, lambda seed, out: guide(_spec(GuideSpec, args, seed=seed, out=out)))


COMMANDS = {"train": _train, "quality": _quality, "run": _run, "bench": _bench, "cost": _cost, "guide": _guide}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if isinstance(getattr(args, "seed", None), list) and len(args.seed) > 1 and "{seed}" not in str(args.out):
        parser.error(f"--out {args.out} must contain {{seed}} to name the records of seeds {args.seed}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", force=True
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        record = COMMANDS[args.command](args)
    except Exception as error:  # outside a run record: a model file, a device, a write
        if args.verbose:
            raise
        print(f"sdo {args.command}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    status = record.get("status", "ok")
    if status == "ok" or getattr(args, "sweep", False):
        return 0
    print(f"sdo {args.command}: {status}: {record.get('reason')}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
