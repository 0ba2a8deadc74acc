"""DiffAugment as the CLIP-guidance protocol draws it: colour, translation, resize and cutout of
`copies` copies of each image, every draw fixed by a seed so the augmented loss is a deterministic
function of the images within an iteration. Cost: element-wise passes over the copies and one
bilinear resize."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augmentation:
    """One iteration's DiffAugment draws for `copies` copies, policy color, translation, resize,
    cutout (Zhao et al. 2020, with the resize of FlowGrad's copy, utils/DiffAugment_pytorch.py in
    gnobitab/FlowGrad, whose CLIP loss the guidance script follows; the script imports it as
    util/DiffAugment_pytorch.py, which its repository does not ship): brightness, saturation,
    contrast (copies, 1, 1, 1) in [0, 1); translations (copies, 1, 1) within 1/8 of the side; one
    resize ratio in [0.8, 1.2); cutout centres (copies, 1, 1) of half-side squares."""

    brightness: torch.Tensor
    saturation: torch.Tensor
    contrast: torch.Tensor
    shift_rows: torch.Tensor
    shift_cols: torch.Tensor
    ratio: float
    cut_rows: torch.Tensor
    cut_cols: torch.Tensor

    @classmethod
    def draw(cls, copies: int, side: int, seed: int) -> Augmentation:
        """In the order and with the calls of the script's DiffAugment (torch for all but the
        resize ratio, which numpy draws)."""
        generator = torch.Generator().manual_seed(seed)

        def uniform():
            return torch.rand(copies, 1, 1, 1, generator=generator, dtype=torch.float64)

        def integers(low: int, high: int):
            return torch.randint(low, high, (copies, 1, 1), generator=generator)

        shift, cut = int(side * 0.125 + 0.5), int(side * 0.5 + 0.5)
        brightness, saturation, contrast = uniform(), uniform(), uniform()
        shift_rows, shift_cols = integers(-shift, shift + 1), integers(-shift, shift + 1)
        ratio = float(np.random.RandomState(seed).rand() * (1.2 - 0.8) + 0.8)
        cut_rows, cut_cols = integers(0, side + (1 - cut % 2)), integers(0, side + (1 - cut % 2))
        return cls(brightness, saturation, contrast, shift_rows, shift_cols, ratio, cut_rows, cut_cols)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """The augmented copies of square images x (B, C, S, S): (copies * B, C, S, S), copy-major
        (x.repeat(copies, 1, 1, 1)), every image of a batch with the same draws."""
        batch, _, side, _ = x.shape
        copies = len(self.brightness)

        def per_row(draw: torch.Tensor) -> torch.Tensor:
            return draw.repeat_interleave(batch, dim=0).to(x.device)

        x = x.repeat(copies, 1, 1, 1)
        x = x + (per_row(self.brightness).to(x.dtype) - 0.5)
        mean = x.mean(dim=1, keepdim=True)
        x = (x - mean) * (per_row(self.saturation).to(x.dtype) * 2) + mean
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * (per_row(self.contrast).to(x.dtype) + 0.5) + mean
        x = _translate(x, per_row(self.shift_rows), per_row(self.shift_cols))
        x = _resize(x, self.ratio)
        return x * _cutout_mask(side, per_row(self.cut_rows), per_row(self.cut_cols), x.dtype).unsqueeze(1)


def _translate(x: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Shift each image by whole pixels, filling with zeros (DiffAugment's translation)."""
    n, _, height, width = x.shape
    source_rows = (torch.arange(height, device=x.device) + rows.view(n, 1) + 1).clamp(0, height + 1)
    source_cols = (torch.arange(width, device=x.device) + cols.view(n, 1) + 1).clamp(0, width + 1)
    padded = F.pad(x, (1, 1, 1, 1))
    index = torch.arange(n, device=x.device).view(n, 1, 1)
    return padded[index, :, source_rows[:, :, None], source_cols[:, None, :]].permute(0, 3, 1, 2)


def _resize(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """Rescale by `ratio` (bilinear), then zero-pad or crop back to the side, centred as the
    script does."""
    side, scaled = x.shape[-1], int(ratio * x.shape[-1])
    resized = F.interpolate(x, size=scaled, mode="bilinear", align_corners=False)
    if scaled < side:
        before = int((side - scaled) / 2.0)
        after = side - before - scaled
        return F.pad(resized, (before, after, before, after))
    start = int((scaled - side) / 2.0)
    return resized[:, :, start : start + side, start : start + side]


def _cutout_mask(side: int, rows: torch.Tensor, cols: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Zero a square of half the side around each centre, cut at the borders (DiffAugment's cutout)."""
    cut = int(side * 0.5 + 0.5)
    pixels = torch.arange(side, device=rows.device)
    inside_rows = (pixels >= rows.view(-1, 1) - cut // 2) & (pixels < rows.view(-1, 1) - cut // 2 + cut)
    inside_cols = (pixels >= cols.view(-1, 1) - cut // 2) & (pixels < cols.view(-1, 1) - cut // 2 + cut)
    return 1 - (inside_rows[:, :, None] & inside_cols[:, None, :]).to(dtype)
