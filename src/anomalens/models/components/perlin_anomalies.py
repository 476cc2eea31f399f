"""DRAEM's simulated anomalies (Zavrtanik et al., ICCV 2021, Sec. 3.3 and Fig. 4): Perlin-noise masks filled
with augmented texture from an anomaly-source image, blended into a normal image.

1. Perlin noise P (Perlin 1985; gradient noise, the fade 6t⁵ − 15t⁴ + 10t³) on a lattice of 2^a × 2^b cells,
   a and b drawn independently from [``scales[0]``, ``scales[1]``) (the paper: 2^[0, 6)), rotated by a random
   angle in [−90°, 90°] as the authors' code does; the mask is M = [P > ``threshold``] (0.5).
2. The anomaly source A: an image of the source pool, a random crop resized to the working size, changed by
   three augmentations drawn at random (without repetition) from the authors' list of ten: gamma contrast,
   brightness multiply-and-add, sharpness, hue and saturation, solarize, posterize, invert, autocontrast,
   equalize, rotation (their imgaug ranges, applied with torchvision's functional transforms).
3. Eq. 2: I_a = M̄ ⊙ I + (1 − β)(M ⊙ A) + β(M ⊙ I), β ~ U[``blend``] (the paper: [0.1, 1.0]).
   With probability 1 − ``probability`` an image is left unchanged with an empty mask (the authors' code
   leaves half of the images normal, so the discriminator also learns normal images' true negatives).

Every random draw comes from one ``torch.Generator`` argument, or from torch's global generator when it is
None: training uses the global one, so that a run resumed from a checkpoint (which restores that state)
replays the same anomalies; validation passes a freshly seeded one, so every epoch sees the same set.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from anomalens.data import list_images, load_image
from anomalens.errors import DataError

#: scikit-image photos that ship in its wheel (none is a synthetic-benchmark category): the default anomaly
#: source, standing in for the paper's DTD textures, which are not available offline.
BUILTIN_SOURCES = ("astronaut", "camera", "coins", "rocket", "retina", "moon", "page", "text", "cell", "clock",
                   "immunohistochemistry", "hubble_deep_field")


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin_noise(height: int, width: int, cells: tuple[int, int], generator: torch.Generator | None = None) -> torch.Tensor:
    """(height, width) 2-D Perlin noise in about [−1, 1] on a ``cells`` = (rows, cols) lattice."""
    rows, cols = cells
    angles = 2 * math.pi * torch.rand(rows + 1, cols + 1, generator=generator)
    gradients = torch.stack([torch.cos(angles), torch.sin(angles)], -1)  # (rows + 1, cols + 1, 2)
    y = (torch.arange(height, dtype=torch.float32) + 0.5) * rows / height
    x = (torch.arange(width, dtype=torch.float32) + 0.5) * cols / width
    iy, ix = y.floor().long().clamp(max=rows - 1), x.floor().long().clamp(max=cols - 1)
    fy, fx = (y - iy)[:, None], (x - ix)[None, :]  # position inside the cell, (H, 1) and (1, W)

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = gradients[iy + dy][:, ix + dx]  # (H, W, 2)
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    ty, tx = _fade(fy), _fade(fx)
    top = torch.lerp(corner(0, 0), corner(0, 1), tx)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), tx)
    return math.sqrt(2) * torch.lerp(top, bottom, ty)


def _uniform(low: float, high: float, generator: torch.Generator | None) -> float:
    return low + (high - low) * torch.rand((), generator=generator).item()


# The authors' ten augmentations of the anomaly source (imgaug), on (3, H, W) float images in [0, 1].
def _gamma(a: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:  # GammaContrast((0.5, 2.0), per_channel)
    return a.clamp(min=0).pow(0.5 + 1.5 * torch.rand(3, 1, 1, generator=g))


def _brightness(a: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:  # MultiplyAndAddToBrightness
    return (a * _uniform(0.8, 1.2, g) + _uniform(-30, 30, g) / 255).clamp(0, 1)


def _sharpness(a: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:  # pillike.EnhanceSharpness
    return TF.adjust_sharpness(a, _uniform(0.0, 2.0, g))


def _hue_saturation(a: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:  # AddToHueAndSaturation((-50, 50))
    # imgaug's hue unit is 1/255 of the circle around ±(0..255): ±50 is about ±0.1 of a turn.
    a = TF.adjust_hue(a, _uniform(-50, 50, g) / 510)
    return TF.adjust_saturation(a, 1 + _uniform(-50, 50, g) / 255)


def _solarize(a: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:  # Solarize(0.5, threshold=(32, 128))
    threshold = _uniform(32, 128, g) / 255
    return TF.solarize(a, threshold) if torch.rand((), generator=g).item() < 0.5 else a


def _posterize(a: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:  # Posterize(nb_bits=(1, 8))
    return TF.posterize(a, int(torch.randint(1, 9, (), generator=g)))


def _invert(a: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:  # Invert()
    return TF.invert(a)


def _autocontrast(a: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:  # pillike.Autocontrast()
    return TF.autocontrast(a)


def _equalize(a: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:  # pillike.Equalize()
    return TF.equalize(a)


def _rotate(a: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:  # Affine(rotate=(-45, 45))
    return TF.rotate(a, _uniform(-45, 45, g))


AUGMENTATIONS: tuple[Callable[[torch.Tensor, torch.Generator | None], torch.Tensor], ...] = (
    _gamma, _brightness, _sharpness, _hue_saturation, _solarize, _posterize, _invert, _autocontrast, _equalize,
    _rotate,
)


def _shrunk(image: np.ndarray, longest_side: int) -> torch.Tensor:
    """(H, W, 3) float array → (3, h, w) tensor whose longest side is at most ``longest_side``."""
    tensor = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    scale = longest_side / max(tensor.shape[1:])
    if scale < 1:
        size = [max(1, round(tensor.shape[1] * scale)), max(1, round(tensor.shape[2] * scale))]
        tensor = TF.resize(tensor, size, antialias=True)
    return tensor.contiguous()


@functools.lru_cache(maxsize=4)
def _builtin_sources(longest_side: int) -> tuple[torch.Tensor, ...]:
    from skimage import data as skdata  # the photos ship inside the scikit-image wheel

    return tuple(_shrunk(load_image(getattr(skdata, name)(), channels=3), longest_side) for name in BUILTIN_SOURCES)


def load_anomaly_sources(folder: str | None, longest_side: int) -> list[torch.Tensor]:
    """The anomaly-source pool as (3, h, w) float images in [0, 1], each shrunk so its longest side is at most
    ``longest_side`` (memory stays small, crops stay sharp): every image of ``folder``, or the built-in photos
    (``BUILTIN_SOURCES``, decoded once per process) when it is None. DataError for a folder without images."""
    if folder is None:
        return list(_builtin_sources(longest_side))
    paths = list_images(Path(folder))
    if not paths:
        raise DataError(f"{folder}: no images to take anomaly textures from")
    return [_shrunk(load_image(path, channels=3), longest_side) for path in paths]


class AnomalySynthesizer:
    """Eq. 2 over a batch: ``(images, masks) = synthesizer(batch)`` (module docstring)."""

    def __init__(self, sources: list[torch.Tensor], scales: tuple[int, int] = (0, 6), threshold: float = 0.5,
                 blend: tuple[float, float] = (0.1, 1.0), probability: float = 0.5, min_crop: float = 0.25) -> None:
        self.sources, self.scales, self.threshold = sources, scales, threshold
        self.blend, self.probability, self.min_crop = blend, probability, min_crop

    def mask(self, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(H, W) float mask M = [rotated Perlin noise > threshold]; never empty (redrawn, then one cell)."""
        low, high = self.scales
        for _ in range(10):
            cells = tuple(2 ** int(torch.randint(low, high, (), generator=generator)) for _ in range(2))
            # Noise on a square as wide as the image's diagonal, rotated, then cropped: no empty rotated corners.
            side = math.ceil(math.hypot(height, width))
            noise = perlin_noise(side, side, (cells[0], cells[1]), generator)
            noise = TF.rotate(noise[None], _uniform(-90, 90, generator))[0]
            top, left = (side - height) // 2, (side - width) // 2
            mask = (noise[top: top + height, left: left + width] > self.threshold).float()
            if mask.any():
                return mask
        return mask  # rare: an empty mask is a normal example, which training also needs

    def texture(self, height: int, width: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(3, H, W) anomaly texture A: a random crop of a random source image, three random augmentations."""
        source = self.sources[int(torch.randint(len(self.sources), (), generator=generator))]
        h, w = source.shape[1:]
        share = _uniform(self.min_crop, 1.0, generator)
        ch, cw = max(1, round(h * math.sqrt(share))), max(1, round(w * math.sqrt(share)))
        top = int(torch.randint(h - ch + 1, (), generator=generator))
        left = int(torch.randint(w - cw + 1, (), generator=generator))
        texture = TF.resize(source[:, top: top + ch, left: left + cw], [height, width], antialias=True)
        for index in torch.randperm(len(AUGMENTATIONS), generator=generator)[:3].tolist():
            texture = AUGMENTATIONS[index](texture, generator)
        return texture.clamp(0, 1)

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 3, H, W) normal images in [0, 1] on the CPU → (augmented images, (B, 1, H, W) masks)."""
        batch, _, height, width = images.shape
        augmented, masks = images.clone(), torch.zeros(batch, 1, height, width)
        for i in range(batch):
            if torch.rand((), generator=generator).item() >= self.probability:
                continue  # left normal
            mask = self.mask(height, width, generator)
            beta = _uniform(*self.blend, generator)
            texture = self.texture(height, width, generator)
            # Eq. 2: I_a = M̄ ⊙ I + (1 − β)(M ⊙ A) + β(M ⊙ I)
            augmented[i] = images[i] * (1 - mask) + (1 - beta) * texture * mask + beta * images[i] * mask
            masks[i, 0] = mask
        return augmented, masks
