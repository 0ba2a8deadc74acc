"""The embedded digits models as experiments: training one (`train`) and measuring the label
accuracy and FID of its samples per guidance scale (`quality`)."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from evals import records
from evals.outcomes import new_record, recorded_failures, resolve_device, write_record
from evals.specs import QualitySpec, TrainSpec
from sdo.memory import budget_bytes, enforce_budget
from sdo.models import load_model

log = logging.getLogger(__name__)


def train(spec: TrainSpec) -> dict:
    """Train `spec.kind` and save it in `spec.out` (a directory), under the memory budget."""
    from sdo.models.train import train_and_save

    record = {"config": records.strict(vars(spec)), "status": "ok"}
    with recorded_failures(record):
        with enforce_budget(budget_bytes(spec.mem_mb), torch.device("cpu")):
            record["metrics"] = train_and_save(spec.kind, spec.out, spec.seed, spec.train_steps, spec.epochs)
    return record


def quality(spec: QualitySpec) -> dict:
    """Label accuracy and FID of an embedded model's samples, per classifier-free guidance scale."""
    from evals import metrics
    from sdo.models import store
    from sdo.models.data import load_split

    record = new_record(spec)
    with recorded_failures(record):
        device = resolve_device(spec.device)
        with enforce_budget(budget_bytes(spec.mem_mb, device), device):
            model = load_model(spec.model, device, **spec.model_options)
            if model.domain != "digits":
                raise ValueError(
                    f"quality measures the embedded digits models; {spec.model!r} makes {model.domain} images"
                )
            classifier = store.load("classifier", model.directory).to(device)
            labels = torch.arange(10).repeat_interleave(spec.per_label)
            latent = model.latent_batch(len(labels), torch.Generator().manual_seed(spec.seed))
            reference, _ = load_split("held_out")
            rows = []
            for cfg_scale in spec.cfg_scales:
                chain = model.make_chain(spec.steps, cfg_scale=cfg_scale)
                samples = torch.cat(
                    [
                        chain.trajectory(z, model.encode([str(int(d)) for d in y]))[0]
                        for z, y in zip(latent.split(100), labels.split(100))
                    ]
                )
                predicted = classifier(samples).argmax(1).cpu()
                rows.append(
                    {
                        "cfg_scale": cfg_scale,
                        "label_accuracy": metrics.label_accuracy(samples, labels, classifier),
                        "label_accuracy_per_digit": [
                            float((predicted[labels == d] == d).float().mean()) for d in range(10)
                        ],
                        "fid": metrics.fid(samples, reference, classifier),
                    }
                )
                log.info(
                    "cfg scale %.1f: label accuracy %.3f, FID %.2f over %d samples",
                    cfg_scale,
                    rows[-1]["label_accuracy"],
                    rows[-1]["fid"],
                    len(samples),
                )
                if len(rows) == 1 and spec.out is not None:
                    grid = samples.view(10, spec.per_label, *samples.shape[1:])[:, :8].flatten(0, 1)
                    title = f"{spec.model} · {chain.name} {spec.steps} steps, cfg scale {cfg_scale}, one row per digit"
                    records.save_grid(Path(spec.out).with_suffix(".png"), grid, title)
            record.update(
                sampler=model.default_sampler(),
                samples=len(labels),
                by_cfg_scale=rows,
                fid_train_vs_held_out=metrics.fid(load_split("train")[0], reference, classifier),
                classifier_held_out_accuracy=store.metrics("classifier", model.directory)["held_out_accuracy"],
            )
    return write_record(record, spec.out)
