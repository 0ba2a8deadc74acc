"""Training of the embedded models on the train split of the digits."""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from diffusers.optimization import get_cosine_schedule_with_warmup
from diffusers.training_utils import EMAModel
from tqdm import tqdm

from sdo.models.classifier import DigitClassifier
from sdo.models.data import NUM_CLASSES, load_split
from sdo.models.denoiser import DEFAULT_CONFIG, FLOW_CONFIG, DigitDenoiser

log = logging.getLogger(__name__)


def _batches(n: int, batch: int, steps: int, generator: torch.Generator):
    """Indices of `steps` shuffled mini-batches, reshuffled every epoch."""
    order = torch.empty(0, dtype=torch.long)
    for _ in range(steps):
        if len(order) < batch:
            order = torch.cat([order, torch.randperm(n, generator=generator)])
        yield order[:batch]
        order = order[batch:]


def _noised_ddpm(config: dict):
    """The DDIM model's objective: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise at a uniform
    integer t; the target is the noise."""
    schedule = DDPMScheduler(**config["scheduler"])

    def noised(x0, noise, generator):
        t = torch.randint(0, schedule.config.num_train_timesteps, (len(x0),), generator=generator)
        return schedule.add_noise(x0, noise, t), t, noise

    return noised


def _noised_flow(config: dict):
    """Rectified flow's objective: z = (1 - sigma) x_0 + sigma noise at a uniform sigma in
    (0, 1], the network's timestep 1000 sigma; the target is the velocity noise - x_0."""
    scale = config["scheduler"]["num_train_timesteps"]

    def noised(x0, noise, generator):
        sigma = 1 - torch.rand(len(x0), generator=generator)
        s = sigma.view(-1, 1, 1, 1)
        return (1 - s) * x0 + s * noise, sigma * scale, noise - x0

    return noised


OBJECTIVES = {"denoiser": (DEFAULT_CONFIG, _noised_ddpm), "flow_denoiser": (FLOW_CONFIG, _noised_flow)}


def train_denoiser(
    steps: int = 2500,
    batch: int = 64,
    lr: float = 1e-3,
    label_dropout: float = 0.1,
    seed: int = 0,
    kind: str = "denoiser",
) -> DigitDenoiser:
    """The `kind` network (`denoiser`: noise prediction; `flow_denoiser`: rectified-flow
    velocity) trained on the train digits by mean squared error; labels dropped to the null
    prompt with probability `label_dropout` so classifier-free guidance works. Returns the EMA
    weights."""
    if kind not in OBJECTIVES:
        raise ValueError(f"unknown denoiser kind {kind!r}; known: {sorted(OBJECTIVES)}")
    config, objective = OBJECTIVES[kind]
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_split("train")
    model = DigitDenoiser(config).train()
    noised = objective(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    lr_schedule = get_cosine_schedule_with_warmup(
        optimizer, num_warmup_steps=min(100, steps // 10), num_training_steps=steps
    )
    ema = EMAModel(model.parameters(), decay=0.999, use_ema_warmup=True)
    progress = tqdm(_batches(len(labels), batch, steps, generator), total=steps, desc=kind, mininterval=5)
    for index in progress:
        x0, y = images[index], labels[index].clone()
        y[torch.rand(len(y), generator=generator) < label_dropout] = NUM_CLASSES
        noise = torch.randn(x0.shape, generator=generator)
        x, t, target = noised(x0, noise, generator)
        loss = F.mse_loss(model(x, t, model.embed(y)), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(model.parameters())
        progress.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    ema.copy_to(model.parameters())
    return model.eval()


def train_classifier(
    epochs: int = 60, batch: int = 64, lr: float = 2e-3, seed: int = 0
) -> tuple[DigitClassifier, float]:
    """Cross-entropy with random one-pixel shifts; returns the model and its held-out accuracy."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    images, labels = load_split("train")
    model = DigitClassifier().train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(labels) // batch)
    lr_schedule = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=0, num_training_steps=steps)
    for index in tqdm(_batches(len(labels), batch, steps, generator), total=steps, desc="classifier", mininterval=5):
        shift = torch.randint(-1, 2, (2,), generator=generator).tolist()
        x = torch.roll(images[index], shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(model(x), labels[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        lr_schedule.step()
    model.eval()
    held_images, held_labels = load_split("held_out")
    with torch.no_grad():
        accuracy = (model(held_images).argmax(1) == held_labels).float().mean().item()
    log.info("classifier held-out accuracy %.4f", accuracy)
    return model, accuracy


def train_and_save(kind: str, directory, seed: int = 0, train_steps: int = 2500, epochs: int = 60) -> dict:
    """Train the embedded `kind` (denoiser, flow_denoiser or classifier) and save it to
    `directory` (safetensors beside its JSON config and metrics); returns the metrics."""
    import time

    from sdo.models import store

    if kind == "classifier":
        model, accuracy = train_classifier(epochs=epochs, seed=seed)
        metrics = {"held_out_accuracy": accuracy}
    else:
        start = time.perf_counter()
        model = train_denoiser(steps=train_steps, seed=seed, kind=kind)
        metrics = {"train_seconds": time.perf_counter() - start, "train_steps": train_steps}
    store.save(model, kind, directory, metrics=metrics)
    return metrics
