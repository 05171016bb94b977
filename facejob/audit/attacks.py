"""White-box L∞ attacks (FGSM, PGD) on the recogniser, batched, in 0–255 pixel units.

An attack changes the probe's pixels by at most `eps` grey levels so that its descriptor moves
away from the reference's (dodging: a same-person pair stops matching) or towards it
(impersonation: a different-person pair matches). The result is always a valid uint8 image:
the perturbation is rounded to whole grey levels, clipped to ±floor(eps) and to 0..255, and the
audit measures success on exactly that image.

The input is either the aligned chip itself (`forward` = the recogniser) or a crop of the whole
photo (`PhotoWarp`: the recogniser after dlib's chip sampling, written in torch so gradients
reach the photo's pixels; that is how the transfer case is attacked).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from facejob.face.dlibport.chips import ChipDetails, chip_corners, chip_details, chip_sampling

from .config import ATTACKS, GOALS

Forward = Callable[[torch.Tensor], torch.Tensor]   # (n, 3, H, W) float pixels -> (n, 128)


@dataclass(frozen=True)
class AttackParams:
    """method: fgsm or pgd; eps: L∞ bound in grey levels; PGD: `steps` steps of `step`·eps each,
    starting from a uniform random point in the eps-ball when `random_start`."""

    method: str
    eps: float
    steps: int = 10
    step: float = 0.25
    random_start: bool = True


def distance(desc: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(desc - ref, dim=1)


def attack(forward: Forward, x: torch.Tensor, ref: torch.Tensor, goal: str, p: AttackParams,
           generator: torch.Generator, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The adversarial version of the uint8-valued float batch `x` (n, 3, H, W): whole grey
    levels, |x_adv - x| <= floor(eps), in 0..255. `ref`: (n, 128) reference descriptors.
    `mask` (n, 1, H, W) of 0/1 limits the change to where it is 1."""
    if goal not in GOALS:
        raise ValueError(f"goal must be one of {GOALS}, got {goal!r}")
    bound = math.floor(p.eps)
    if bound <= 0:
        return x.clone()
    sign = 1.0 if goal == "dodging" else -1.0   # ascend +distance (dodging) or -distance

    def grad(delta: torch.Tensor) -> torch.Tensor:
        delta = delta.detach().requires_grad_(True)
        loss = sign * distance(forward(x + delta), ref).sum()   # pairs are independent: sum
        (g,) = torch.autograd.grad(loss, delta)
        return g if mask is None else g * mask

    if p.method == "fgsm":
        delta = p.eps * grad(torch.zeros_like(x)).sign()
    elif p.method == "pgd":
        if p.random_start:
            noise = torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1
            delta = noise.to(x.device) * p.eps
            if mask is not None:
                delta = delta * mask
            delta = (x + delta).clamp(0, 255) - x
        else:
            delta = torch.zeros_like(x)
        for _ in range(p.steps):
            delta = delta + p.step * p.eps * grad(delta).sign()
            delta = (x + delta.clamp(-p.eps, p.eps)).clamp(0, 255) - x
    else:
        raise ValueError(f"attack must be one of {ATTACKS}, got {p.method!r}")
    # x holds whole grey levels, so a whole-level delta within ±floor(eps) keeps both promises.
    return (x + delta.detach().round().clamp(-bound, bound)).clamp(0, 255)


def to_tensor(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, H, W) float32 on `device`."""
    return torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(n, 3, H, W) float whole grey levels -> (n, H, W, 3) uint8."""
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def recogniser_forward(model: torch.nn.Module) -> Forward:
    """The recogniser on (n, 3, 150, 150) chips, in the memory layout TorchEmbedder uses."""
    def forward(x: torch.Tensor) -> torch.Tensor:
        return model(x.contiguous(memory_format=torch.channels_last))
    return forward


# --- the transfer case: attacking the photo through dlib's chip sampling -----------------------

_PYRAMID = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])


def pyramid_down(x: torch.Tensor) -> torch.Tensor:
    """dlib's pyramid_down<2> ([1 4 6 4 1]² / 256, stride 2, output (n-3)//2) without its
    truncation to integers, so that it has a gradient."""
    k = torch.outer(_PYRAMID, _PYRAMID).to(x) / 256
    return F.conv2d(x, k.expand(x.shape[1], 1, 5, 5), stride=2, groups=x.shape[1])


@dataclass
class PhotoCrop:
    """The part of a photo that a face's chip is sampled from, and where in it."""

    origin: tuple[int, int]     # (x, y) of the crop's top-left pixel in the photo
    pixels: np.ndarray          # (h, w, 3) uint8
    level: int                  # -1: sampled from the crop itself; k: from pyramid level k
    xs: np.ndarray              # (150, 150) sampling points, dlib's
    ys: np.ndarray


def photo_crop(image: np.ndarray, landmarks: np.ndarray) -> PhotoCrop:
    """The crop of `image` that dlib cuts the chip of the face with `landmarks` from (when it
    cuts that face alone, as the pipeline does), with dlib's sampling points in it: the same
    crop, so that the pyramid levels built on it line up with dlib's."""
    d: ChipDetails = chip_details(landmarks)
    level, _, _ = chip_sampling(d)
    grow = 2.0 ** (level + 3) - 2   # dlib: 2, then grow*2 + 2 per pyramid level
    corners = chip_corners(d)
    h, w = image.shape[:2]
    x0 = math.floor(max(min(p[0] for p in corners) - grow, 0.0) + 0.5)
    y0 = math.floor(max(min(p[1] for p in corners) - grow, 0.0) + 0.5)
    x1 = math.floor(min(max(p[0] for p in corners) + grow, w - 1.0) + 0.5)
    y1 = math.floor(min(max(p[1] for p in corners) + grow, h - 1.0) + 0.5)
    level, xs, ys = chip_sampling(d, (x0, y0))
    return PhotoCrop((x0, y0), image[y0:y1 + 1, x0:x1 + 1], level, xs, ys)


class PhotoWarp:
    """photo crops -> descriptors: the chip sampled as dlib samples it (pyramid levels, then
    bilinear), then the recogniser. Crops of one batch must share their pyramid level; they
    are zero-padded to one size (the chip never reads the padding)."""

    def __init__(self, model: torch.nn.Module, crops: list[PhotoCrop], device: torch.device) -> None:
        levels = {c.level for c in crops}
        if len(levels) != 1:
            raise ValueError(f"one pyramid level per batch, got {sorted(levels)}")
        self.level = levels.pop()
        self.height = max(c.pixels.shape[0] for c in crops)
        self.width = max(c.pixels.shape[1] for c in crops)
        sizes = [(self.height, self.width)]
        for _ in range(self.level + 1):
            sizes.append(((sizes[-1][0] - 3) // 2, (sizes[-1][1] - 3) // 2))
        sh, sw = sizes[-1]
        # grid_sample with align_corners=True puts -1 and +1 on the first and last pixel centres
        grid = np.stack([np.stack([c.xs * 2 / (sw - 1) - 1, c.ys * 2 / (sh - 1) - 1], -1) for c in crops])
        self.grid = torch.from_numpy(grid).float().to(device)
        self.forward_chip = recogniser_forward(model)
        self.device = device

    def padded(self, crops: list[PhotoCrop]) -> torch.Tensor:
        """The crops as one zero-padded (n, 3, H, W) float batch."""
        out = np.zeros((len(crops), self.height, self.width, 3), np.uint8)
        for i, c in enumerate(crops):
            out[i, :c.pixels.shape[0], :c.pixels.shape[1]] = c.pixels
        return to_tensor(out, self.device)

    def mask(self, crops: list[PhotoCrop]) -> torch.Tensor:
        """1 on each crop's real pixels, 0 on the padding."""
        m = torch.zeros((len(crops), 1, self.height, self.width), device=self.device)
        for i, c in enumerate(crops):
            m[i, :, :c.pixels.shape[0], :c.pixels.shape[1]] = 1
        return m

    def chips(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(self.level + 1):
            x = pyramid_down(x)
        return F.grid_sample(x, self.grid, mode="bilinear", padding_mode="zeros", align_corners=True)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_chip(self.chips(x))
