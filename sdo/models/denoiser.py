"""The embedded networks: a small diffusers UNet conditioned on embedding sequences, trained to
predict the noise (DDIM, `DEFAULT_CONFIG`) or the velocity (rectified flow, `FLOW_CONFIG`).

Each digit label owns a learned sequence of embedding vectors, the way a text encoder turns a
prompt into token embeddings for Stable Diffusion; one extra sequence is the null prompt of
classifier-free guidance. Optimising conditioning therefore means optimising such a sequence.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from sdo.models.data import IMAGE_SIZE, NUM_CLASSES

DDIM_SETTINGS = {"clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1}  # how the digits are sampled
DEFAULT_CONFIG = {
    "unet": {
        "sample_size": IMAGE_SIZE,
        "in_channels": 1,
        "out_channels": 1,
        "block_out_channels": [32, 64],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "attention_head_dim": 8,
        "norm_num_groups": 8,
    },
    "tokens": 4,
    "scheduler": {
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 0.0001,
        "beta_end": 0.02,
        **DDIM_SETTINGS,
    },
}


FLOW_CONFIG = {
    "unet": DEFAULT_CONFIG["unet"],
    "tokens": DEFAULT_CONFIG["tokens"],
    "scheduler": {"num_train_timesteps": 1000, "shift": 1.0},  # FlowMatchEulerDiscreteScheduler
}


class DigitDenoiser(nn.Module):
    """out(x, t, cond) with `cond` of shape (B, tokens, cross_attention_dim): the noise, or the
    velocity for a flow-matching config."""

    def __init__(self, config: dict = DEFAULT_CONFIG):
        super().__init__()
        self.config = config
        self.unet = UNet2DConditionModel(**config["unet"])
        dim = config["unet"]["cross_attention_dim"]
        self.label_embeddings = nn.Parameter(torch.randn(NUM_CLASSES + 1, config["tokens"], dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t, encoder_hidden_states=cond).sample

    def embed(self, labels: torch.Tensor) -> torch.Tensor:
        """Conditioning sequences for digit labels 0-9 (label 10 is the null prompt)."""
        if labels.min() < 0 or labels.max() > NUM_CLASSES:
            raise ValueError(f"labels must lie in 0..{NUM_CLASSES} ({NUM_CLASSES} = null), got {labels.tolist()}")
        return self.label_embeddings[labels]

    def null(self, batch: int) -> torch.Tensor:
        """The null-prompt sequence, repeated for a batch."""
        return self.label_embeddings[NUM_CLASSES].expand(batch, -1, -1)
