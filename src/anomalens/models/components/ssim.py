"""Reconstruction losses and residual maps of the autoencoders: 1 − SSIM, 1 − MS-SSIM and L2.

SSIM (Wang et al. 2004) with the usual constants: an 11-tap Gaussian window of σ = 1.5, K1 = 0.01,
K2 = 0.03, images in [0, 1] (``data_range`` = 1). The windowed statistics come from ``pytorch_msssim``
(its Gaussian window and separable filter), so losses and maps share one implementation.

- Training losses (``reconstruction_loss``) follow the reference code's Keras losses: ``1 − SSIM`` and
  ``1 − MS-SSIM`` are ``pytorch_msssim.ssim`` / ``ms_ssim``, computed like ``tf.image.ssim`` /
  ``tf.image.ssim_multiscale`` (valid-mode window, mean over pixels and channels; five scales with
  the weights 0.0448, 0.2856, 0.3001, 0.2363, 0.1333, 2×2 average pooling between scales). ``l2`` is ½ Σ (x − x̂)² per image, averaged
  over the batch (``tf.nn.l2_loss`` is the same ½ Σ taken over the whole batch).
- Residual maps (``residual_map``) are full-size, one value per pixel: ``1 − SSIM`` computed with the
  window centred on every pixel and the borders mirrored (scipy's ``reflect``), exactly what
  ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
  use_sample_covariance=False, data_range=1, full=True)`` returns; or the squared error. Both are
  averaged over colour channels.

Differences from the reference's residual maps (``processing/postprocessing.py``): it converts RGB to
grey before the map (here each channel gets its own map and the maps are averaged, so a defect that
changes colour but not brightness still shows); its skimage call left ``data_range`` to the float
default of old skimage (2, which shrinks C1 and C2 fourfold) and used the sample covariance
(a 121/120 factor); and it clips 1 − SSIM to ≤ 1. None of this changes which pixels stand out.
"""

from __future__ import annotations

import torch
from pytorch_msssim import ms_ssim, ssim
from pytorch_msssim.ssim import _fspecial_gauss_1d, gaussian_filter

from anomalens.errors import ConfigError

LOSSES = ("ssim", "mssim", "l2")
RESIDUALS = ("ssim", "l2")
WIN_SIZE = 11
WIN_SIGMA = 1.5
K1, K2 = 0.01, 0.03
# MS-SSIM downsamples four times and needs the 11-px window to fit at the coarsest scale.
MSSSIM_MIN_SIZE = (WIN_SIZE - 1) * 2**4 + 1


def check_loss(loss: str, height: int, width: int) -> None:
    """ConfigError for an unknown loss or an image too small for it."""
    if loss not in LOSSES:
        raise ConfigError(f"unknown loss '{loss}'; use one of {', '.join(LOSSES)}")
    if loss == "mssim" and min(height, width) < MSSSIM_MIN_SIZE:
        raise ConfigError(
            f"loss 'mssim' (5-scale MS-SSIM, {WIN_SIZE}-px window) needs images of at least "
            f"{MSSSIM_MIN_SIZE} px on each side, got {height}x{width}; use loss 'ssim' or 'l2' for small images"
        )


def reconstruction_loss(inputs: torch.Tensor, outputs: torch.Tensor, loss: str) -> torch.Tensor:
    """Scalar training loss between (B, C, H, W) images in [0, 1] and their reconstructions."""
    if loss == "ssim":
        return 1.0 - ssim(inputs, outputs, data_range=1.0, size_average=True, win_size=WIN_SIZE, win_sigma=WIN_SIGMA)
    if loss == "mssim":
        return 1.0 - ms_ssim(inputs, outputs, data_range=1.0, size_average=True, win_size=WIN_SIZE, win_sigma=WIN_SIGMA)
    if loss == "l2":
        return 0.5 * (inputs - outputs).pow(2).flatten(1).sum(1).mean()
    raise ConfigError(f"unknown loss '{loss}'; use one of {', '.join(LOSSES)}")


def _mirror_pad(images: torch.Tensor, radius: int) -> torch.Tensor:
    """Pad the last two dims by ``radius`` with edge-including mirroring (d c b a | a b c d | d c b a).

    This is scipy.ndimage's 'reflect' (skimage's choice for SSIM maps); torch's own 'reflect' mode
    leaves the edge pixel out, and it cannot pad more than the image size, which the second branch handles.
    The first branch (the usual case) is written with slices and a constant index so that an ONNX export
    knows the padded size: an index computed from the traced size left it unknown, and the export failed.
    """
    for dim in (-2, -1):
        size = images.shape[dim]
        if radius <= size:
            backwards = torch.arange(radius - 1, -1, -1, device=images.device)
            before = images.narrow(dim, 0, radius).index_select(dim, backwards)
            after = images.narrow(dim, size - radius, radius).index_select(dim, backwards)
            images = torch.cat([before, images, after], dim)
            continue
        # Index of each padded position in the original: mirror, period 2·size.
        idx = torch.arange(-radius, size + radius, device=images.device) % (2 * size)
        idx = torch.where(idx >= size, 2 * size - 1 - idx, idx)
        images = images.index_select(dim, idx)
    return images


def ssim_map(inputs: torch.Tensor, outputs: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B, C, H, W) → (B, C, H, W) SSIM with the Gaussian window centred on every pixel."""
    radius = WIN_SIZE // 2
    # Each channel filtered as an image of its own: one (1, 1, 1, 11) window, a constant shape in an ONNX
    # export (a window repeated per channel took its shape from the traced input, and the export failed).
    batch, channels, height, width = inputs.shape
    win = _fspecial_gauss_1d(WIN_SIZE, WIN_SIGMA).reshape(1, 1, 1, WIN_SIZE).to(inputs)
    x = _mirror_pad(inputs.reshape(batch * channels, 1, height, width), radius)
    y = _mirror_pad(outputs.reshape(batch * channels, 1, height, width), radius)
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    mu_x, mu_y = gaussian_filter(x, win), gaussian_filter(y, win)
    var_x = gaussian_filter(x * x, win) - mu_x.pow(2)
    var_y = gaussian_filter(y * y, win) - mu_y.pow(2)
    cov = gaussian_filter(x * y, win) - mu_x * mu_y
    luminance = (2 * mu_x * mu_y + c1) / (mu_x.pow(2) + mu_y.pow(2) + c1)
    structure = (2 * cov + c2) / (var_x + var_y + c2)
    return (luminance * structure).reshape(batch, channels, height, width)


def residual_map(inputs: torch.Tensor, outputs: torch.Tensor, method: str) -> torch.Tensor:
    """(B, C, H, W) images and reconstructions → (B, H, W) residual map, averaged over channels.

    ``ssim``: 1 − SSIM (0 where identical, up to 2 where anti-correlated); ``l2``: (x − x̂)².
    """
    if method == "ssim":
        return 1.0 - ssim_map(inputs, outputs).mean(1)
    if method == "l2":
        return (inputs - outputs).pow(2).mean(1)
    raise ConfigError(f"unknown residual map '{method}'; use one of {', '.join(RESIDUALS)}")


__all__ = [
    "LOSSES",
    "MSSSIM_MIN_SIZE",
    "RESIDUALS",
    "check_loss",
    "reconstruction_loss",
    "residual_map",
    "ssim_map",
]
