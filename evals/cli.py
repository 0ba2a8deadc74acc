"""The `sdo` command: parses flags into an experiment spec and calls `evals.experiment`.

Each plug-in's options go in flags of their own, `KEY=VALUE` each (the value read as JSON where
it parses: numbers, booleans, lists; else text) and checked by the plug-in that owns them:
`--option` (the estimator), `--model-option`, `--task-option`, `--reward-option`,
`--metric-option`. `--plugin FILE.py` imports a file that registers more models, tasks,
samplers, estimators or rewards before anything else.

Exit status: 0 when the record's status is `ok` (or, with `--sweep`, whenever the record was
written), 1 when the run could not be done as asked (the record still says why), 2 for bad
usage.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import time
from pathlib import Path

import torch

from evals import experiment
from sdo.estimators import ESTIMATORS, PARAMETER_KINDS
from sdo.models import store
from sdo.tasks import TASKS

log = logging.getLogger("sdo")


def _option(text: str) -> tuple[str, object]:
    """`key=value` with the value read as JSON where it parses (numbers, booleans), else text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"an option must look like key=value, got {text!r}")
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


def _options_flag(parser: argparse.ArgumentParser, flag: str, dest: str, owner: str) -> None:
    parser.add_argument(flag, dest=dest, type=_option, action="append", default=[], metavar="KEY=VALUE",
                        help=f"an option of the {owner} (repeatable)")


def _sweep_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", action="store_true",
                        help="exit 0 whenever the record is written, whatever its status (for workflows)")


MODEL_HELP = (
    "embedded (default), embedded-flow, sd:/sdxl:/sd3:/flux:<directory or model id>, a diffusers directory, "
    "or random:<architecture> (random weights: cost only)"
)


def _model_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="embedded", help=MODEL_HELP)
    _options_flag(parser, "--model-option", "model_options", "model (e.g. dtype=bfloat16, gradient_checkpointing=true)")
    parser.add_argument("--mem-mb", type=_positive, default=None,
                        help="memory budget in MiB: a run predicted or found past it ends as out_of_memory")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:i]")


def _sampling_flags(parser: argparse.ArgumentParser) -> None:
    """What is sampled and how it is scored: shared by `run` and `guide`."""
    _model_flags(parser)
    _options_flag(parser, "--task-option", "task_options", "task (e.g. prompt=3, lora_rank=4, eval_samples=100)")
    parser.add_argument("--steps", type=_positive, required=True, help="sampling steps T")
    parser.add_argument("--seed", type=int, nargs="+", default=[0],
                        help="one or more seeds, run one after another in this process (one import, one model load)")
    parser.add_argument("--batch", type=_positive, default=8)
    parser.add_argument("--reward", default="classifier",
                        help="digits: classifier, style, inpaint, superres; rgb: clip, aesthetic, style, mean_square; "
                             "or a callable 'package.module:function' / 'file.py:function'")
    _options_flag(parser, "--reward-option", "reward_options", "reward (e.g. target=3, clip_model=DIR, text=...)")
    parser.add_argument("--reward-tolerance", type=float, default=1e-2, help="differentiability check tolerance")
    parser.add_argument("--metric", "--metrics", dest="metrics", action="extend", nargs="+", default=[], metavar="MODULE:FUNCTION",
                        help="extra evaluation-only metric images -> per-sample scores (repeatable)")
    _options_flag(parser, "--metric-option", "metric_options", "metrics (e.g. clip_model=DIR, inception_weights=FILE)")
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1: none)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM's stochasticity (ddim samplers only)")
    parser.add_argument("--out", type=Path, required=True,
                        help="record PATH.json (a PATH.png grid goes beside it); {seed} in PATH stands for the seed, "
                             "required with several seeds")
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
    _model_flags(parser)
    parser.add_argument("--batch", type=_positive, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1: none)")
    parser.add_argument("--rounds", type=_positive, default=5, help="timed rounds (sampling pass, then gradient) after a warm-up")
    parser.add_argument("--no-plain-loop", dest="plain_loop", action="store_false",
                        help="do not time the plain diffusers loop beside full and the shortcut")
    parser.add_argument("--reward", default=None, help="the loss's reward (default: the model's domain's bench reward)")
    _options_flag(parser, "--reward-option", "reward_options", "reward")
    parser.add_argument("--lora-rank", type=int, default=None,
                        help="weights: LoRA rank (default 0, all weights, on the embedded models; 4 otherwise)")
    _sweep_flag(parser)


def _estimator_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=sorted(ESTIMATORS), required=True, help="the gradient estimator")
    _options_flag(parser, "--option", "options", "estimator (e.g. checkpoint=true, at=all, tail=5)")
    parser.add_argument("--variant", default=None, help="name of this estimator configuration in tables (default: the method)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=_positive, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--plugin", action="append", default=[], metavar="FILE.py",
                        help="import a file that registers models, tasks, samplers, estimators or rewards (repeatable)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an embedded model and save it as safetensors")
    train.add_argument("kind", choices=sorted(store.KINDS))
    train.add_argument("--out", type=Path, default=store.DEFAULT_DIR, help="directory for <kind>.safetensors/.json")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--train-steps", type=_positive, default=2500, help="denoiser optimiser steps")
    train.add_argument("--epochs", type=_positive, default=60, help="classifier epochs")

    quality = commands.add_parser("quality", help="label accuracy and FID of an embedded model's samples")
    quality.add_argument("--model", default="embedded", help="embedded or embedded-flow")
    _options_flag(quality, "--model-option", "model_options", "model (weights=DIR)")
    quality.add_argument("--steps", type=_positive, default=50)
    quality.add_argument("--cfg-scale", dest="cfg_scales", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    quality.add_argument("--per-label", type=_positive, default=50)
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--device", default="auto")
    quality.add_argument("--out", type=Path, required=True, help="record PATH.json (a PATH.png grid goes beside it)")

    run = commands.add_parser("run", help="optimise a task with one gradient estimator and write a JSON record")
    run.add_argument("--task", choices=sorted(TASKS), default="latent")
    _estimator_flags(run)
    run.add_argument("--iters", type=_positive, required=True, help="optimisation iterations")
    run.add_argument("--lr", type=float, default=None, help="learning rate (default: the task's)")
    run.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.999), metavar=("B1", "B2"), help="Adam's betas")
    run.add_argument("--eval-every", type=int, default=2, help="evaluate on held-out noise every N iterations (0: start and end)")
    run.add_argument("--audit-every", type=int, default=0,
                     help="online fidelity audit: the exact gradient every N iterations, untimed (0: off)")
    run.add_argument("--fallback-below", type=float, default=None,
                     help="audit: use the exact gradient when the cosine falls below this (its cost counts)")
    run.add_argument("--audit-checkpoint", action="store_true", help="audit: checkpoint the exact gradient per step")
    run.add_argument("--start-tolerance", type=float, default=None,
                     help="end as invalid_start when the estimator's own sampler starts further than this from the chain's")
    run.add_argument("--reuse", type=Path, default=None,
                     help="staged records (evals.rerun): a seed whose record there has this config and did not fail "
                          "is moved back instead of run again")
    _sampling_flags(run)

    guide = commands.add_parser("guide", help="training-free guidance on the latent task's latents: one guided pass")
    guide.add_argument("--scale", type=float, default=0.2, help="guidance step size")
    guide.add_argument("--schedule", choices=["constant", "increase", "decrease"], default="constant")
    guide.add_argument("--repeats", type=_positive, default=1, help="FreeDoM time-travel repeats per step")
    guide.add_argument("--variant", default=None, help="name in tables (default: guidance_r<repeats>)")
    _sampling_flags(guide)

    bench = commands.add_parser("bench", help="fidelity and cost of one estimator on the benchmark problem")
    bench.add_argument("--wrt", choices=PARAMETER_KINDS, required=True, help="parameter type to differentiate")
    _estimator_flags(bench)
    bench.add_argument("--steps", type=_positive, required=True)
    bench.add_argument("--reference", type=Path, default=None, help="full gradient (safetensors) to compare with")
    bench.add_argument("--save-gradient", type=Path, default=None, help="also write this gradient as safetensors")
    bench.add_argument("--out", type=Path, required=True, help="row PATH.json")
    _bench_problem_flags(bench)

    backward = commands.add_parser("backward-cost", help="the cost of a backward pass against a forward one on this device")
    backward.add_argument("--wrt", choices=PARAMETER_KINDS, required=True, help="parameter type the backward reaches")
    backward.add_argument("--steps", type=_positive, default=10, help="sampling steps T (the middle step's state is used)")
    backward.add_argument("--batch", type=_positive, default=8)
    backward.add_argument("--seed", type=int, default=0)
    backward.add_argument("--cfg-scale", type=float, default=1.0)
    backward.add_argument("--lora-rank", type=int, default=None, help="weights: LoRA rank (default 0 embedded, 4 otherwise)")
    backward.add_argument("--rounds", type=_positive, default=15, help="timed rounds (their median and its 95%% interval)")
    backward.add_argument("--out", type=Path, required=True, help="record PATH.json")
    _model_flags(backward)

    cost = commands.add_parser(
        "cost", help="cost of several estimator variants x parameter types x T in one process (the model is built once)"
    )
    cost.add_argument("--variant", dest="variants", type=_variant, action="append", required=True,
                      metavar="NAME=METHOD[:KEY=VALUE,...]", help="a named estimator variant, e.g. draft_1=truncated:tail=1 (repeatable)")
    cost.add_argument("--wrt", choices=PARAMETER_KINDS, nargs="+", required=True, help="parameter types to differentiate")
    cost.add_argument("--steps", type=_positive, nargs="+", required=True, help="sampling steps T")
    cost.add_argument("--out-dir", type=Path, required=True, help="rows go to OUT_DIR/<wrt>/T<steps>/<variant>.json")
    _bench_problem_flags(cost)
    return parser


def _spec(cls, args: argparse.Namespace, **given):
    """The dataclass `cls` from the parsed flags it has fields for; KEY=VALUE lists become dicts."""
    names = {f.name for f in cls.__dataclass_fields__.values()}
    values = {k: (dict(v) if k.endswith("options") and isinstance(v, list) else v) for k, v in vars(args).items() if k in names}
    return cls(**{**values, **given})


def _train(args) -> dict:
    from sdo.models import train

    if args.kind == "classifier":
        model, accuracy = train.train_classifier(epochs=args.epochs, seed=args.seed)
        store.save(model, "classifier", args.out, metrics={"held_out_accuracy": accuracy})
    else:
        start = time.perf_counter()
        model = train.train_denoiser(steps=args.train_steps, seed=args.seed, kind=args.kind)
        metrics = {"train_seconds": time.perf_counter() - start, "train_steps": args.train_steps}
        store.save(model, args.kind, args.out, metrics=metrics)
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
    from evals.rerun import reuse

    def run_seed(seed: int, out: Path) -> dict:
        spec = _spec(experiment.RunSpec, args, seed=seed, out=out)
        return reuse(experiment.new_record(spec, spec.device)["config"], out, args.reuse) or experiment.run(spec)

    return _each_seed(args, run_seed)


def _bench(args) -> dict:
    return experiment.bench(_spec(experiment.BenchSpec, args))


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


def _backward_cost(args) -> dict:
    return experiment.measure_backward_cost(_spec(experiment.BackwardCostSpec, args))


COMMANDS = {
    "train": _train, "quality": _quality, "run": _run, "bench": _bench, "cost": _cost, "guide": _guide,
    "backward-cost": _backward_cost,
}


def import_plugin(path: str | Path) -> None:
    """Import a file that registers plug-ins (models, tasks, samplers, estimators, rewards),
    once per process."""
    path = Path(path).resolve()
    if not path.is_file():
        raise FileNotFoundError(f"plugin file {path} does not exist")
    name = f"_sdo_plugin_{path.stem}"
    if getattr(sys.modules.get(name), "__file__", None) == str(path):
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--plugin", action="append", default=[])
    for path in early.parse_known_args(argv)[0].plugin:  # before the parser lists the registries' choices
        import_plugin(path)
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
    except Exception as error:  # outside a run record: a model file, a write
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
