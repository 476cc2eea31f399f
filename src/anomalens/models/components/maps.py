"""Turning patch-grid scores into anomaly maps at input resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.v2.functional import gaussian_blur


def blur_kernel_size(sigma: float) -> int:
    """Odd kernel covering ±4σ, as scipy.ndimage.gaussian_filter does by default (truncate=4)."""
    return 2 * int(4.0 * sigma + 0.5) + 1


def upsample_and_blur(patch_scores: torch.Tensor, image_size: tuple[int, int], sigma: float) -> torch.Tensor:
    """(B, h, w) grid scores → (B, H, W) maps: bilinear upsampling, then Gaussian blur (σ in pixels).

    The blur (σ = 4 in PaDiM, SPADE and PatchCore) suppresses single-patch noise. Border handling is torch's
    'reflect' padding (scipy's 'mirror'); the reference code's scipy default differs only at the edges.
    """
    maps = F.interpolate(patch_scores.unsqueeze(1), size=image_size, mode="bilinear", align_corners=False)
    if sigma > 0:
        k = blur_kernel_size(sigma)
        maps = gaussian_blur(maps, kernel_size=[k, k], sigma=[sigma, sigma])
    return maps.squeeze(1)
