"""Simplex noise and RD++'s pseudo-anomalies (Tien et al., CVPR 2023, Sec. 3.3): a patch of fractal simplex noise
added to a normal image.

1. 3-D simplex noise (Perlin 2001, in the formulation of Gustavson, "Simplex noise demystified", 2005): the point
   is skewed by F = 1/3 onto the cubic lattice, its simplex (one of six tetrahedra of the cell) found from the order
   of its offsets, and each of the four corners adds (0.6 − |d|²)₊⁴ · (g · d), d the offset to the corner and g one
   of the 12 cube-edge gradients picked by hashing the corner through a permutation of 0..255; the sum × 32 lies in
   about [−1, 1]. Evaluated for every point of a tensor at once.
2. Fractal noise (``fractal_simplex``): octaves o = 0 … O − 1 of period P / 2^o and amplitude p^o (persistence
   p), summed; the third coordinate is the colour channel, so the channels get related, different noise — the
   authors' ``rand_3d_octaves((3, h, w), 6, 0.6)`` with P = 32 px at 256 px, here P = 1/8 of the image side.
3. The pseudo-anomaly (``add_simplex_patches``): in each image a rectangle whose sides are drawn in
   [``extent[0]``, ``extent[1]``) of the image's sides (the authors' code: 10-31 px at 256 px) at a random place
   receives ``strength`` × the fractal noise (0.2), added to the [0, 1] image and not clipped, as there.

Why written here: ``opensimplex`` (PyPI) evaluates one point per Python call unless numba — a compiler
dependency — is installed: 0.5 s for one 32×32 RGB patch of 6 octaves on this machine, a minute per epoch of 120
images, where this vectorised version takes milliseconds. Every draw comes from one ``torch.Generator`` (None:
torch's global one, whose state a training checkpoint saves, so that a resumed fit replays the same noise). Each
image gets its own permutation — a new noise field — where the authors' code seeds one field per dataset and so
adds the same pattern, cropped differently, to every image.
"""

from __future__ import annotations

import torch

_SKEW, _UNSKEW = 1.0 / 3.0, 1.0 / 6.0
#: The 12 gradients: the midpoints of a cube's edges.
_GRADIENTS = torch.tensor([[1, 1, 0], [-1, 1, 0], [1, -1, 0], [-1, -1, 0], [1, 0, 1], [-1, 0, 1], [1, 0, -1],
                           [-1, 0, -1], [0, 1, 1], [0, -1, 1], [0, 1, -1], [0, -1, -1]], dtype=torch.float32)


def simplex_noise_3d(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, permutation: torch.Tensor) -> torch.Tensor:
    """3-D simplex noise at the points (x, y, z) (float tensors of one shape), in about [−1, 1]; ``permutation``:
    a permutation of 0..255 (long) that fixes the noise field."""
    skew = (x + y + z) * _SKEW
    cell = [torch.floor(c + skew) for c in (x, y, z)]
    unskew = (cell[0] + cell[1] + cell[2]) * _UNSKEW
    offset = [c - (i - unskew) for c, i in zip((x, y, z), cell)]
    # The simplex: rank of each offset among the three (ties broken by axis order); the second corner steps along
    # the largest axis, the third along the largest two.
    ox, oy, oz = offset
    rank = [(ox >= oy).long() + (ox >= oz).long(), (oy > ox).long() + (oy >= oz).long(),
            (oz > ox).long() + (oz > oy).long()]
    corners = [[torch.zeros_like(r) for r in rank], [(r >= 2).long() for r in rank], [(r >= 1).long() for r in rank],
               [torch.ones_like(r) for r in rank]]
    lattice = [i.long() for i in cell]
    noise = torch.zeros_like(x)
    for n, step in enumerate(corners):
        d = [o - s + n * _UNSKEW for o, s in zip(offset, step)]
        hashed = permutation[(lattice[2] + step[2]) & 255]
        hashed = permutation[(lattice[1] + step[1] + hashed) & 255]
        hashed = permutation[(lattice[0] + step[0] + hashed) & 255]
        gradient = _GRADIENTS.to(x.dtype)[hashed % 12]
        falloff = (0.6 - d[0] ** 2 - d[1] ** 2 - d[2] ** 2).clamp(min=0)
        noise = noise + falloff ** 4 * (gradient[..., 0] * d[0] + gradient[..., 1] * d[1] + gradient[..., 2] * d[2])
    return 32.0 * noise


def fractal_simplex(channels: int, height: int, width: int, period: float, octaves: int, persistence: float,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """(channels, height, width) fractal simplex noise: Σ_o persistence^o · noise(p / (period / 2^o)), with the
    channel index as the third coordinate and a random permutation (one noise field) per call."""
    permutation = torch.randperm(256, generator=generator)
    z, y, x = torch.meshgrid(torch.arange(channels, dtype=torch.float32), torch.arange(height, dtype=torch.float32),
                             torch.arange(width, dtype=torch.float32), indexing="ij")
    octave = torch.arange(octaves, dtype=torch.float32)[:, None, None, None]
    scale, amplitude = period / 2 ** octave, persistence ** octave  # every octave in one evaluation
    return (amplitude * simplex_noise_3d(x / scale, y / scale, z / scale, permutation)).sum(0)

def _side(extent: tuple[float, float], size: int, generator: torch.Generator | None) -> int:
    """A patch side in [round(extent[0] · size), round(extent[1] · size)), at least 1 and at most ``size``."""
    low = min(size, max(1, round(extent[0] * size)))
    high = min(size + 1, max(low + 1, round(extent[1] * size)))
    return int(torch.randint(low, high, (), generator=generator))


def add_simplex_patches(images: torch.Tensor, extent: tuple[float, float], octaves: int, persistence: float,
                        strength: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, C, H, W) images in [0, 1] on the CPU → the same with one patch of ``strength`` × fractal simplex noise
    each (the module docstring); the base period is 1/8 of the image's shorter side."""
    noisy = images.clone()
    _, channels, height, width = images.shape
    period = min(height, width) / 8
    for image in noisy:
        h, w = _side(extent, height, generator), _side(extent, width, generator)
        top = int(torch.randint(height - h + 1, (), generator=generator))
        left = int(torch.randint(width - w + 1, (), generator=generator))
        image[:, top:top + h, left:left + w] += strength * fractal_simplex(channels, h, w, period, octaves, persistence,
                                                                           generator)
    return noisy

