"""Augmentations that suit overhead imagery: the eight flips and quarter turns, mild
radiometric jitter, and resampling for scale jitter, with boxes moved consistently.

Every function takes and returns a chip ``image`` FloatTensor[C, H, W] (normalised
units: 0 is the band mean, 1 one standard deviation) and ``boxes`` FloatTensor[N, 4],
``xyxy`` in pixel-edge coordinates of that chip (0 <= x1 < x2 <= W, 0 <= y1 < y2 <= H).
Nothing here reads files or knows about maps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def hflip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror left-right: x -> W - x."""
    width = image.shape[-1]
    return image.flip(-1), torch.stack(
        [width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1
    )


def vflip(image: Tensor, boxes: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror top-bottom: y -> H - y."""
    height = image.shape[-2]
    return image.flip(-2), torch.stack(
        [boxes[:, 0], height - boxes[:, 3], boxes[:, 2], height - boxes[:, 1]], dim=1
    )


def rot90(image: Tensor, boxes: Tensor, k: int = 1) -> tuple[Tensor, Tensor]:
    """Turn the chip ``k`` quarter turns counter-clockwise (as displayed, north up).

    One turn maps pixel-edge point (x, y) of a W-wide chip to (y, W - x); the result
    is [C, W, H].
    """
    for _ in range(k % 4):
        width = image.shape[-1]
        image = torch.rot90(image, 1, dims=(-2, -1))
        boxes = torch.stack(
            [boxes[:, 1], width - boxes[:, 2], boxes[:, 3], width - boxes[:, 0]], dim=1
        )
    return image, boxes


def dihedral(image: Tensor, boxes: Tensor, index: int) -> tuple[Tensor, Tensor]:
    """One of the eight symmetries of the square: ``index`` in 0..7 (0 is identity);
    bit 2 mirrors left-right, then ``index % 4`` quarter turns follow."""
    if index & 4:
        image, boxes = hflip(image, boxes)
    return rot90(image, boxes, index % 4)


def resize(image: Tensor, boxes: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """Resample a square chip to ``size`` × ``size`` (bilinear, anti-aliased when
    shrinking); pixel-edge boxes scale by ``size / old size`` exactly."""
    old = image.shape[-1]
    if old == size:
        return image, boxes
    out = F.interpolate(
        image[None], size=(size, size), mode="bilinear", align_corners=False, antialias=size < old
    )[0]
    return out, boxes * (size / old)


def jitter_radiometry(
    image: Tensor, generator: torch.Generator, *, brightness: float, contrast: float, colour: float
) -> Tensor:
    """Random brightness (shift in std units), contrast (about the chip mean) and
    per-band gain (colour balance), each drawn uniformly within ±the given amount."""
    bands = image.shape[0]

    def uniform(amount: float, n: int = 1) -> Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * amount

    mean = image.mean(dim=(-2, -1), keepdim=True)
    gain = (1 + uniform(contrast)) * (1 + uniform(colour, bands))
    shift = uniform(brightness) + uniform(colour, bands) * 0.5
    return (image - mean) * gain.view(-1, 1, 1) + mean + shift.view(-1, 1, 1)


@dataclass(frozen=True)
class Augmentation:
    """How strongly training chips are varied.

    Attributes:
        dihedral: draw one of the eight flips / quarter turns per chip (overhead
            imagery has no "up", so all eight are equally real).
        brightness, contrast, colour: ranges for :func:`jitter_radiometry`.
        noise: std of added Gaussian noise, in normalised units (0 = none).
        scale: relative scale jitter; the chip is read ``1 / s`` times as large for a
            uniform ``s`` in ``[1 - scale, 1 + scale]`` and resampled (see the dataset).
    """

    dihedral: bool = True
    brightness: float = 0.2
    contrast: float = 0.2
    colour: float = 0.1
    noise: float = 0.03
    scale: float = 0.1

    def __call__(
        self, image: Tensor, boxes: Tensor, generator: torch.Generator
    ) -> tuple[Tensor, Tensor]:
        """Apply the geometric and radiometric parts (scale is applied by the reader)."""
        if self.dihedral:
            index = int(torch.randint(8, (1,), generator=generator))
            image, boxes = dihedral(image, boxes, index)
        if self.brightness or self.contrast or self.colour:
            image = jitter_radiometry(
                image,
                generator,
                brightness=self.brightness,
                contrast=self.contrast,
                colour=self.colour,
            )
        if self.noise:
            image = image + torch.randn(image.shape, generator=generator) * self.noise
        return image.contiguous(), boxes


NO_AUGMENTATION = Augmentation(
    dihedral=False, brightness=0.0, contrast=0.0, colour=0.0, noise=0.0, scale=0.0
)
