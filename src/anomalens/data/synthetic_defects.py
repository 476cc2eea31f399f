"""Defects painted on a synthetic normal image, and the ground-truth mask of each.

An anomalous test image is one defect on top of a normal image (``synthetic_images``); the mask marks exactly
the pixels the defect changed by more than :data:`MASK_THRESHOLD` (holes inside a defect's footprint filled
in), so no pixel outside the mask differs from the defect-free image by more than that. Each painter returns
an alpha map (H, W) in [0, 1] and the target image to blend towards; every draw comes from the caller's
generator, so a seeded generator gives the same defect.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

from anomalens.data.synthetic_images import (
    SYNTHETIC_SOURCES,
    defect_region,
    texture_crop,
)
from anomalens.errors import DataError

#: Defect types, named like MVTec AD's.
DEFECT_TYPES: tuple[str, ...] = ("scratch", "stain", "hole", "patch")

#: A pixel belongs to the mask when the defect changed it by more than this (in [0, 1] units).
MASK_THRESHOLD = 0.04

# Allowed defect area as a fraction of the image (defects are re-drawn until they fit).
_MIN_AREA, _MAX_AREA = 0.002, 0.05
_MAX_TRIES = 25


def check_defect_type(defect_type: str) -> None:
    """DataError naming the choices unless ``defect_type`` is one of :data:`DEFECT_TYPES`."""
    if defect_type not in DEFECT_TYPES:
        raise DataError(f"unknown defect type {defect_type!r}; choose from {', '.join(DEFECT_TYPES)}")


def quantise(img: np.ndarray) -> np.ndarray:
    """Round to the 8-bit values the PNG will hold, so masks are computed on stored pixels."""
    return (np.round(np.clip(img, 0, 1) * 255) / 255).astype(np.float32)


def _place(
    size: int, roi: tuple[float, float, float, float] | None, margin: float, rng: np.random.Generator
) -> np.ndarray:
    """A (row, col) defect centre: inside the object's ROI ellipse, or anywhere off the border."""
    if roi is None:
        return rng.uniform(margin, size - margin, size=2)
    cr, cc, rr, rc = roi
    theta, rho = rng.uniform(0, 2 * np.pi), np.sqrt(rng.uniform(0, 1))
    return np.array([cr + rr * rho * np.sin(theta), cc + rc * rho * np.cos(theta)]) * size


def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    return rows, cols


def _scratch(img: np.ndarray, rng: np.random.Generator, roi) -> tuple[np.ndarray, np.ndarray]:
    """A thin curved line (cubic Bezier) of a contrasting light or dark colour."""
    size = img.shape[0]
    length = rng.uniform(0.2, 0.45) * size
    start = _place(size, roi, 0.1 * size, rng)
    angle = rng.uniform(0, 2 * np.pi)
    direction = np.array([np.sin(angle), np.cos(angle)])
    normal = np.array([-direction[1], direction[0]])
    end = start + length * direction
    # Control points pushed sideways make the curve bend like a real scratch.
    c1 = start + length * (0.33 * direction + rng.uniform(-0.25, 0.25) * normal)
    c2 = start + length * (0.66 * direction + rng.uniform(-0.25, 0.25) * normal)
    t = np.linspace(0.0, 1.0, int(length * 3) + 2)[:, None]
    pts = (1 - t) ** 3 * start + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t**2 * c2 + t**3 * end
    pts = np.round(pts).astype(int)
    keep = (pts >= 0).all(1) & (pts < size).all(1)
    centre_line = np.zeros((size, size), dtype=bool)
    centre_line[pts[keep, 0], pts[keep, 1]] = True
    # Distance to the centre line gives an anti-aliased stroke of any (fractional) width.
    half_width = max(0.6, rng.uniform(1.0, 2.2) * size / 256.0)
    dist = ndimage.distance_transform_edt(~centre_line)
    alpha = np.clip(half_width + 0.5 - dist, 0.0, 1.0) * rng.uniform(0.6, 1.0)
    # Contrasting colour: light scratch on dark surroundings, dark on light.
    local = float(img[alpha > 0].mean()) if (alpha > 0).any() else 0.5
    value = rng.uniform(0.8, 1.0) if local < 0.5 else rng.uniform(0.0, 0.2)
    tint = 1.0 + rng.uniform(-0.05, 0.05, size=img.shape[-1])
    target = np.broadcast_to(np.clip(value * tint, 0, 1), img.shape).astype(np.float32)
    return alpha.astype(np.float32), target


def _blob(size: int, roi, radius: tuple[float, float], margin: float,
          rng: np.random.Generator) -> tuple[float, float, np.ndarray]:
    """A rotated ellipse with a wobbly outline, placed at random: its radii (the long one ``radius`` × the side,
    the short one half to all of it) and its normalised radius field (1 on the outline). ``margin``: the
    distance from the border a texture's centre keeps, as a share of the side."""
    ra = rng.uniform(*radius) * size
    rb = ra * rng.uniform(0.5, 1.0)
    centre = _place(size, roi, margin * size, rng)
    rows, cols = _grid(size)
    phi = rng.uniform(0, np.pi)
    dr, dc = rows - centre[0], cols - centre[1]
    u = dr * np.cos(phi) + dc * np.sin(phi)
    v = -dr * np.sin(phi) + dc * np.cos(phi)
    rho = np.sqrt((u / ra) ** 2 + (v / rb) ** 2)
    theta = np.arctan2(v, u)
    wobble = 1.0
    for k in (2, 3, 5):  # low angular frequencies only, so the outline stays blob-like
        wobble = wobble + rng.uniform(0.0, 0.12) * np.sin(k * theta + rng.uniform(0, 2 * np.pi))
    return ra, rb, (rho / wobble).astype(np.float32)


def _stain(img: np.ndarray, rng: np.random.Generator, roi) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged blob that darkens, bleaches or tints the surface."""
    ra, _, rho = _blob(img.shape[0], roi, (0.05, 0.12), 0.12, rng)
    # Smooth fall-off from the centre to ~1.3x the outline: no hard edge.
    alpha = np.clip((1.3 - rho) / 0.6, 0.0, 1.0) ** 1.5 * rng.uniform(0.7, 1.0)
    # Dirt or oil also hides the surface structure underneath: flatten the texture towards
    # its local mean before changing the tone (a pure tone change on a busy texture such as
    # gravel would look like an ordinary shadow).
    smooth = ndimage.gaussian_filter(img, sigma=(ra / 3, ra / 3, 0))
    flat = rng.uniform(0.4, 0.8)
    base = img * (1 - flat) + smooth * flat
    mode = rng.choice(["dark", "light", "tint"] if img.shape[-1] == 3 else ["dark", "light"])
    if mode == "dark":
        target = base * rng.uniform(0.3, 0.6)
    elif mode == "light":
        target = base + (1 - base) * rng.uniform(0.4, 0.7)
    else:
        colour = rng.uniform([0.35, 0.2, 0.0], [0.8, 0.55, 0.25]).astype(np.float32)  # brownish/yellow
        target = np.broadcast_to(colour, img.shape) * (0.5 + base.mean(-1, keepdims=True))
    return alpha.astype(np.float32), np.clip(target, 0, 1).astype(np.float32)


def _hole(img: np.ndarray, rng: np.random.Generator, roi) -> tuple[np.ndarray, np.ndarray]:
    """A dark, sharp-edged irregular ellipse, darker in the middle (a hole or dent)."""
    ra, rb, rho = _blob(img.shape[0], roi, (0.018, 0.05), 0.08, rng)
    alpha = np.clip((1.0 - rho) * min(ra, rb) + 0.5, 0.0, 1.0)  # ~1 px anti-aliased edge
    depth = rng.uniform(0.02, 0.15)
    shade = depth * (0.6 + 0.8 * np.clip(rho, 0, 1))[..., None]
    target = np.broadcast_to(shade, img.shape)
    return alpha.astype(np.float32), np.clip(target, 0, 1).astype(np.float32)


def _patch(img: np.ndarray, rng: np.random.Generator, roi, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Cut-paste: a rotated rectangle of foreign material, brightness-matched to its new place.

    Textures get a piece of another texture; objects a piece of another part of the photo,
    turned by a multiple of 90 degrees, so the patch is plausible material in the wrong place.
    """
    size, channels = img.shape[0], img.shape[-1]
    h = rng.uniform(0.08, 0.2) * size
    w = h * rng.uniform(0.6, 1.6)
    centre = _place(size, roi, 0.12 * size, rng)
    if SYNTHETIC_SOURCES[source] == "texture":
        others = [s for s, k in SYNTHETIC_SOURCES.items() if k == "texture" and s != source]
        donor = texture_crop(str(rng.choice(others)), size, rng)
    else:
        donor = np.rot90(np.roll(img, (size // 2, size // 3), axis=(0, 1)), int(rng.integers(1, 4))).copy()
    if donor.shape[-1] != channels:
        donor = np.repeat(donor.mean(-1, keepdims=True), channels, axis=-1)
    # Rotated rectangle footprint with a ~1 px soft edge.
    rows, cols = _grid(size)
    phi = rng.uniform(0, np.pi)
    dr, dc = rows - centre[0], cols - centre[1]
    u = np.abs(dr * np.cos(phi) + dc * np.sin(phi))
    v = np.abs(-dr * np.sin(phi) + dc * np.cos(phi))
    alpha = np.clip(np.minimum(h / 2 - u, w / 2 - v) + 0.5, 0.0, 1.0)
    inside = alpha > 0.5
    if not inside.any():
        return alpha.astype(np.float32), img
    # Match the donor's mean to the destination so the patch is not just a brightness jump.
    donor = donor - donor[inside].mean(0) + img[inside].mean(0)
    return alpha.astype(np.float32), np.clip(donor, 0, 1).astype(np.float32)


_PAINTERS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "stain": _stain,
    "hole": _hole,
}


def add_defect(
    image: np.ndarray, defect_type: str, rng: np.random.Generator, source: str = "brick"
) -> tuple[np.ndarray, np.ndarray]:
    """Add one ``defect_type`` defect to a float (H, W, C) image; returns (image, bool mask).

    The mask is the set of pixels changed by more than :data:`MASK_THRESHOLD` (with holes in
    the defect footprint filled); the defect is redrawn until its mask covers 0.2%-5% of the
    image. ``source`` selects the defect region (on the part for objects) and the donor
    material for ``patch``.
    """
    check_defect_type(defect_type)
    roi = defect_region(source)
    size = image.shape[0]
    best: tuple[np.ndarray, np.ndarray] | None = None
    best_err = np.inf
    for _ in range(_MAX_TRIES):
        if defect_type == "patch":
            alpha, target = _patch(image, rng, roi, source)
        else:
            alpha, target = _PAINTERS[defect_type](image, rng, roi)
        # Quantised to 8 bits here, so the mask describes exactly the pixels that get stored.
        out = quantise(image * (1 - alpha[..., None]) + target * alpha[..., None])
        changed = np.abs(out - image).max(-1) > MASK_THRESHOLD
        mask = ndimage.binary_fill_holes(changed) & (alpha > 0)
        area = float(mask.mean())
        if _MIN_AREA <= area <= _MAX_AREA:
            return out, mask
        # Keep the closest attempt in case none fits (tiny images): still a valid pair.
        err = _MIN_AREA - area if area < _MIN_AREA else area - _MAX_AREA
        if err < best_err and mask.any():
            best, best_err = (out, mask), err
    if best is None:
        raise DataError(f"could not draw a visible {defect_type} defect on a {size}x{size} image")
    return best
