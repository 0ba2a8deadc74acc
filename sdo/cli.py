"""The `sdo` command: train the embedded models, run a task with an estimator, write records."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
import time
from pathlib import Path

import torch

from sdo.estimators import ESTIMATORS, PARAMETER_KINDS, NotApplicable, make_estimator
from sdo.models import store
from sdo.models.data import load_split
from sdo.tasks import TASKS, Settings

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


def _prompt(text: str) -> int | None:
    if text == "none":
        return None
    if text.isdigit() and 0 <= int(text) <= 9:
        return int(text)
    raise argparse.ArgumentTypeError(f"prompt must be a digit 0-9 or 'none', got {text!r}")


def _device(text: str) -> torch.device:
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text.startswith("cuda") and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"device {text!r} asked for but CUDA is not available")
    return torch.device(text)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdo", description=__doc__)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train an embedded model and save it as safetensors")
    train.add_argument("kind", choices=sorted(store.KINDS))
    train.add_argument("--out", type=Path, default=store.DEFAULT_DIR, help="directory for <kind>.safetensors/.json")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--train-steps", type=_positive, default=2500, help="denoiser optimiser steps")
    train.add_argument("--epochs", type=_positive, default=60, help="classifier epochs")

    quality = commands.add_parser("quality", help="label accuracy and FID of the base model's samples")
    quality.add_argument("--models", type=Path, default=store.DEFAULT_DIR)
    quality.add_argument("--steps", type=int, default=50)
    quality.add_argument("--guidance", type=float, nargs="+", default=[1.0, 2.0, 3.0])
    quality.add_argument("--per-label", type=_positive, default=50)
    quality.add_argument("--seed", type=int, default=0)
    quality.add_argument("--out", type=Path, required=True, help="record PATH.json (a PATH.png grid goes beside it)")

    run = commands.add_parser("run", help="optimise a task with one gradient estimator and write a JSON record")
    run.add_argument("--task", choices=sorted(TASKS), default="latent")
    run.add_argument("--method", choices=sorted(ESTIMATORS), required=True)
    run.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE",
                     help="estimator option, e.g. checkpoint=true or steps=all (repeatable)")
    run.add_argument("--steps", type=_positive, required=True, help="DDIM steps T")
    run.add_argument("--iters", type=_positive, required=True, help="optimisation iterations")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--batch", type=_positive, default=8)
    run.add_argument("--reward", default="classifier",
                     help="classifier, style, inpaint, superres, or a callable 'package.module:function' / 'file.py:function'")
    run.add_argument("--target", type=int, default=3, help="digit the classifier reward asks for")
    run.add_argument("--reference-index", type=int, default=0, help="held-out digit used by style, inpaint, superres")
    run.add_argument("--metric", action="append", default=[], metavar="MODULE:FUNCTION",
                     help="extra evaluation-only metric images -> per-sample scores (repeatable)")
    run.add_argument("--inception-weights", type=Path, default=None, help="local Inception-v3 weights: adds Inception FID")
    run.add_argument("--clip-model", type=Path, default=None, help="local CLIP model directory: adds CLIP score")
    run.add_argument("--reward-tolerance", type=float, default=1e-2, help="differentiability check tolerance")
    run.add_argument("--prompt", type=_prompt, default=None, help="conditioning digit, or 'none' (default)")
    run.add_argument("--guidance", type=float, default=1.0)
    run.add_argument("--eta", type=float, default=0.0)
    run.add_argument("--lr", type=float, default=None, help="learning rate (default: the task's)")
    run.add_argument("--renormalize", action="store_true", help="latent task: DOODL's latent renormalisation")
    run.add_argument("--lora-rank", type=int, default=4, help="finetune task: LoRA rank, 0 for all UNet weights")
    run.add_argument("--eval-samples", type=_positive, default=100, help="conditioning/finetune: samples for final metrics")
    run.add_argument("--models", type=Path, default=store.DEFAULT_DIR)
    run.add_argument("--device", type=_device, default="auto")
    run.add_argument("--out", type=Path, required=True, help="record PATH.json (a PATH.png grid goes beside it)")

    bench = commands.add_parser("bench", help="fidelity and cost of one estimator on the benchmark problem")
    bench.add_argument("--wrt", choices=PARAMETER_KINDS, required=True, help="parameter type to differentiate")
    bench.add_argument("--method", choices=sorted(ESTIMATORS), required=True)
    bench.add_argument("--option", type=_option, action="append", default=[], metavar="KEY=VALUE")
    bench.add_argument("--steps", type=_positive, required=True)
    bench.add_argument("--batch", type=_positive, default=8)
    bench.add_argument("--seed", type=int, default=0)
    bench.add_argument("--guidance", type=float, default=1.0)
    bench.add_argument("--repeats", type=_positive, default=2, help="timed calls after one warm-up")
    bench.add_argument("--reference", type=Path, default=None, help="full gradient (safetensors) to compare with")
    bench.add_argument("--save-gradient", type=Path, default=None, help="also write this gradient as safetensors")
    bench.add_argument("--models", type=Path, default=store.DEFAULT_DIR)
    bench.add_argument("--device", type=_device, default="auto")
    bench.add_argument("--variant", default=None, help="name of this configuration in tables")
    bench.add_argument("--out", type=Path, required=True, help="row PATH.json")
    return parser


def _train(args) -> None:
    from sdo.models import train

    if args.kind == "classifier":
        model, accuracy = train.train_classifier(epochs=args.epochs, seed=args.seed)
        store.save(model, "classifier", args.out, metrics={"held_out_accuracy": accuracy})
    else:
        start = time.perf_counter()
        model = train.train_denoiser(steps=args.train_steps, seed=args.seed)
        metrics = {"train_seconds": time.perf_counter() - start, "train_steps": args.train_steps}
        store.save(model, "denoiser", args.out, metrics=metrics)


def _quality(args) -> None:
    """Label accuracy and FID of the base model's samples, per guidance scale."""
    from evals import metrics, records
    from sdo.tasks.loop import latent_batch, make_chain

    net, classifier = store.load("denoiser", args.models), store.load("classifier", args.models)
    labels = torch.arange(10).repeat_interleave(args.per_label)
    latent = latent_batch(net, len(labels), torch.Generator().manual_seed(args.seed))
    reference, _ = load_split("held_out")
    rows = []
    for guidance in args.guidance:
        chain = make_chain(net, args.steps, guidance=guidance)
        samples = torch.cat([chain.trajectory(z, net.embed(y))[0] for z, y in zip(latent.split(100), labels.split(100))])
        predicted = classifier(samples).argmax(1)
        rows.append({
            "guidance": guidance,
            "label_accuracy": metrics.label_accuracy(samples, labels, classifier),
            "label_accuracy_per_digit": [float((predicted[labels == d] == d).float().mean()) for d in range(10)],
            "fid": metrics.fid(samples, reference, classifier),
        })
        log.info("guidance %.1f: label accuracy %.3f, FID %.2f over %d samples", guidance, rows[-1]["label_accuracy"], rows[-1]["fid"], len(samples))
        if len(rows) == 1:
            grid = samples.view(10, args.per_label, *samples.shape[1:])[:, :8].flatten(0, 1)
            records.save_grid(args.out.with_suffix(".png"), grid, f"DDIM {args.steps}, guidance {guidance}, one row per digit")
    real = metrics.fid(load_split("train")[0], reference, classifier)
    record = {
        "config": {"steps": args.steps, "per_label": args.per_label, "seed": args.seed},
        **records.environment("cpu"),
        "samples": len(labels),
        "by_guidance": rows,
        "fid_train_vs_held_out": real,
        "classifier_held_out_accuracy": store.metrics("classifier", args.models)["held_out_accuracy"],
    }
    records.write_json(args.out, record)


@contextlib.contextmanager
def _recorded_failures(record: dict):
    """Turn what stops a run into its record's status and reason, so a sweep never loses a row:
    not_applicable (the estimator's rule cannot reach the parameter), out_of_memory, failed."""
    try:
        yield
    except NotApplicable as reason:
        record.update(status="not_applicable", reason=str(reason))
        log.warning("not applicable: %s", reason)
    except torch.OutOfMemoryError as error:
        record.update(status="out_of_memory", reason=str(error).splitlines()[0])
        log.error("out of memory: %s", record["reason"])
    except Exception as error:
        record.update(status="failed", reason=f"{type(error).__name__}: {error}")
        log.exception("failed")


def _task_options(args) -> dict:
    """The chosen task's own keyword arguments."""
    if args.task == "latent":
        return {"prompt": args.prompt, "renormalize": args.renormalize}
    if args.task == "conditioning":
        return {"prompt": args.prompt, "eval_samples": args.eval_samples}
    return {"lora_rank": args.lora_rank, "eval_samples": args.eval_samples}


def _run(args) -> None:
    from evals import metrics, records
    from evals.rewards import build_reward, check_differentiable, load_callable

    options = dict(args.option)
    config = {k: v for k, v in vars(args).items() if k not in ("command", "verbose", "option")}
    config.update(options=options, device=str(args.device))
    record = {"config": config, **records.environment(args.device), "status": "ok", "iterations": [], "final": {}}
    with _recorded_failures(record):
        net = store.load("denoiser", args.models).to(args.device)
        classifier = store.load("classifier", args.models).to(args.device)
        held_out, _ = load_split("held_out")
        reward = build_reward(args.reward, classifier, args.target, held_out[args.reference_index : args.reference_index + 1].to(args.device))
        probe = held_out[1:5] + 0.1 * torch.randn(held_out[1:5].shape, generator=torch.Generator().manual_seed(0))
        record["reward_check_error"] = check_differentiable(reward, probe.to(args.device), tolerance=args.reward_tolerance)
        extra = {spec: load_callable(spec) for spec in args.metric}
        estimator = make_estimator(args.method, **options)
        settings = Settings(args.steps, args.iters, args.batch, args.guidance, args.eta, args.lr, args.seed)
        result = TASKS[args.task](net, reward, estimator, settings, **_task_options(args))
        target = args.target if args.reward == "classifier" else None
        record["iterations"] = result.iterations
        for key, samples in (("final", result.samples), ("baseline", result.baseline)):
            record[key] = metrics.summarize(
                samples, reward, classifier, held_out, target, result.prompts, extra, args.inception_weights, args.clip_model
            )
        title = f"{args.task} · {args.method} · T={args.steps} · reward {args.reward}"
        records.save_grid(args.out.with_suffix(".png"), result.samples[:32], title)
    records.write_json(args.out, record)
    log.info("wrote %s (status %s)", args.out, record["status"])


def _bench(args) -> None:
    from safetensors.torch import load_file, save_file

    from evals import records
    from evals.bench import bench_problem, measure

    options = dict(args.option)
    row = {
        "variant": args.variant or args.method + "".join(f"[{k}={v}]" for k, v in sorted(options.items())),
        "method": args.method, "options": json.dumps(options, sort_keys=True), "wrt": args.wrt, "steps": args.steps,
        "batch": args.batch, "seed": args.seed, "guidance": args.guidance, **records.environment(args.device),
        "status": "ok",
    }
    row.pop("versions")
    with _recorded_failures(row):
        net = store.load("denoiser", args.models).to(args.device)
        classifier = store.load("classifier", args.models).to(args.device)
        problem, loss = bench_problem(net, classifier, args.wrt, args.steps, args.batch, args.seed, guidance=args.guidance)
        reference = None
        if args.reference is not None:
            stored = load_file(args.reference)
            reference = [stored[str(i)].to(args.device) for i in range(len(stored))]
        estimator = make_estimator(args.method, **options)
        row.update(measure(estimator, problem, loss, reference, repeats=args.repeats))
        if args.save_gradient is not None:
            grads = estimator(problem, loss).grads
            records.write_atomic(
                args.save_gradient, lambda tmp: save_file({str(i): g.contiguous().cpu() for i, g in enumerate(grads)}, tmp)
            )
    records.write_json(args.out, row)
    log.info("%s %s T=%d: %s", row["variant"], args.wrt, args.steps, {k: row.get(k) for k in ("status", "seconds", "cosine")})


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    {"train": _train, "quality": _quality, "run": _run, "bench": _bench}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
