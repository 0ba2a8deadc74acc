"""The `sdo` command: parses flags into an experiment spec and calls `evals.experiment`.

Every command's flags are generated from its spec's fields (`evals.specs`, `evals.flags`): the
help, the defaults and the types are stated there once. Each plug-in's options go in flags of
their own, `KEY=VALUE` each (the value read as JSON where it parses: numbers, booleans, lists;
else text) and checked by the plug-in that owns them: `--option` (the estimator),
`--model-option`, `--sampler-option`, `--task-option`, `--reward-option`, `--metric-option`.
`--plugin FILE.py` imports a file that registers more models, samplers, estimators, tasks or
rewards before anything else.

Exit status: 0 when the record's status is `ok` (or, with `--sweep`, whenever the record was
written), 1 when the experiment could not be done as asked (the record still says why), 2 for
bad usage: an unknown flag or value, a plug-in that does not load.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from evals import experiment, slots
from evals.flags import add_flags, from_args
from evals.plugins import PluginError, import_plugin

log = logging.getLogger("sdo")


def _outcome(rows: list[dict], name) -> dict:
    """One status for several records: ok when every one is, else the first other status with
    every record that is not ok (`name(record)` says which)."""
    failed = [row for row in rows if row["status"] != "ok"]
    if not failed:
        return {"status": "ok"}
    reasons = "; ".join(f"{name(row)}: {row['status']}" for row in failed)
    return {"status": failed[0]["status"], "reason": f"{len(failed)} of {len(rows)} not ok ({reasons})"}


def _seeds(cls, function):
    """A command that runs `function(spec)` for each `--seed`, `{seed}` in `--out` standing for it."""

    def each(args) -> dict:
        records = []
        for seed in args.seed:
            out = None if args.out is None else Path(str(args.out).replace("{seed}", str(seed)))
            spec = from_args(cls, args, seed=seed, out=out)
            records.append(function(spec, args))
        return records[0] if len(records) == 1 else _outcome(records, lambda r: f"seed {r['config']['seed']}")

    return each


def _run(spec, args) -> dict:
    from evals.rerun import reuse

    return reuse(spec, args.reuse) or experiment.run(spec)


def _profile(args) -> dict:
    rows = experiment.profile(from_args(experiment.ProfileSpec, args))
    return _outcome(rows, lambda row: f"{row['wrt']} T={row['steps']} {row['variant']}")


def _plan(args) -> dict:
    from evals.flags import from_args
    from evals.plan import plan, render
    from evals.records import write_atomic

    spec = from_args(experiment.PlanSpec, args)
    rows = plan(spec.configfile, spec.profile_rows, spec.throughput)
    print(render(rows))
    if spec.out is not None:
        import pandas as pd

        write_atomic(spec.out, lambda tmp: pd.DataFrame(rows).to_csv(tmp, index=False))
    return {"status": "ok"}


def _single(cls, function):
    return lambda args: function(from_args(cls, args))


COMMANDS = {
    "train": (
        experiment.TrainSpec,
        _single(experiment.TrainSpec, experiment.train),
        "train an embedded model and save it as safetensors",
    ),
    "quality": (
        experiment.QualitySpec,
        _single(experiment.QualitySpec, experiment.quality),
        "label accuracy and FID of an embedded model's samples",
    ),
    "run": (
        experiment.RunSpec,
        _seeds(experiment.RunSpec, _run),
        "optimise a task with one gradient estimator and write a JSON record",
    ),
    "guide": (
        experiment.GuideSpec,
        _seeds(experiment.GuideSpec, lambda spec, args: experiment.guide(spec)),
        "training-free guidance on the latent task's latents: one guided pass",
    ),
    "bench": (
        experiment.BenchSpec,
        _single(experiment.BenchSpec, experiment.bench),
        "fidelity and cost of one estimator on the benchmark problem",
    ),
    "backward-cost": (
        experiment.BackwardCostSpec,
        _single(experiment.BackwardCostSpec, experiment.backward_cost),
        "the cost of a backward pass and of the loss against a forward pass on this device",
    ),
    "profile": (
        experiment.ProfileSpec,
        _profile,
        "seconds and memory of several estimator variants x parameter types x T in one process",
    ),
    "plan": (
        experiment.PlanSpec,
        _plan,
        "a cost plan of config files before running them: runs, iterations, device-hours (an estimate)",
    ),
}


def _choices() -> dict:
    """The names the registries hold now (after the plug-ins were imported)."""
    from sdo.estimators import ESTIMATORS
    from sdo.samplers import SAMPLERS
    from sdo.tasks import TASKS

    return {"task": sorted(TASKS), "method": sorted(ESTIMATORS), "sampler": sorted(SAMPLERS)}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="FILE.py",
        help="import a file that registers models, samplers, estimators, tasks or rewards (repeatable)",
    )
    parser.add_argument(
        "--gpus-per-job",
        type=int,
        default=0,
        metavar="N",
        help="claim N free GPUs of this machine for this process (a lock per device under "
        f"{slots.LOCK_DIR}/) and see only them; 0: leave the devices as they are",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and tracebacks")
    commands = parser.add_subparsers(dest="command", required=True)
    choices = _choices()
    from sdo.models.registry import known_sources

    known = {"model": known_sources()}
    for name, (cls, _, description) in COMMANDS.items():
        command = commands.add_parser(name, help=description, description=cls.__doc__)
        add_flags(command, cls, choices, known)
        if name not in ("train", "plan"):
            command.add_argument(
                "--sweep",
                action="store_true",
                help="exit 0 whenever the record is written, whatever its status (for workflows)",
            )
        if name == "run":
            command.add_argument(
                "--reuse",
                type=Path,
                default=None,
                help="staged records (evals.rerun): a seed whose record there has this config and did "
                "not fail is moved back instead of run again",
            )
    return parser


def _fail(message: str, code: int) -> int:
    print(f"sdo: error: {message}", file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    early = argparse.ArgumentParser(add_help=False)
    early.add_argument("--plugin", action="append", default=[])
    try:
        for path in early.parse_known_args(argv)[0].plugin:  # before the parser lists the registries' choices
            import_plugin(path)
    except (PluginError, ValueError, TypeError) as error:
        return _fail(f"--plugin: {error}", 2)
    parser = build_parser()
    args = parser.parse_args(argv)
    if len(getattr(args, "seed", None) or []) > 1 and "{seed}" not in str(args.out):
        parser.error(f"--out {args.out} must contain {{seed}} to name the records of seeds {args.seed}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        force=True,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    _, command, _ = COMMANDS[args.command]
    try:
        slots.claim_device(args.gpus_per_job)  # before anything initialises CUDA
        record = command(args)
    except (ValueError, TypeError) as error:  # a spec refused its values: bad usage
        if args.verbose:
            raise
        return _fail(f"{args.command}: {error}", 2)
    except Exception as error:  # outside a record: a model file, a write, a device slot
        if args.verbose:
            raise
        return _fail(f"{args.command}: {type(error).__name__}: {error}", 1)
    status = record.get("status", "ok")
    if status == "ok" or getattr(args, "sweep", False):
        return 0
    print(f"sdo {args.command}: {status}: {record.get('reason')}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
