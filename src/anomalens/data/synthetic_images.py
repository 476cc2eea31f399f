"""Defect-free images of the synthetic categories, cut from scikit-image's bundled photos.

Normal images vary the way real inspection images do (textures: different crops of the surface with slight
scale jitter and flips; objects: the same part with small shifts, rotations and lighting changes, plus sensor
noise). ``anomalens.data.synthetic`` writes them as categories; ``synthetic_defects`` paints on them.
"""

from __future__ import annotations

import functools

import numpy as np
from skimage import data as skdata
from skimage import transform

from anomalens.errors import DataError

#: Category name -> "texture" or "object". All images ship inside the scikit-image wheel.
SYNTHETIC_SOURCES: dict[str, str] = {
    "brick": "texture",
    "grass": "texture",
    "gravel": "texture",
    "coffee": "object",
    "chelsea": "object",
}

# Objects: (row0, row1, col0, col1) square crop of the photo that frames the part, and the
# elliptical region (centre row, centre col, radius row, radius col; relative to the crop)
# where defects land, i.e. on the part rather than the background.
_OBJECT_CROPS = {
    "coffee": ((0, 400, 78, 478), (0.52, 0.50, 0.33, 0.36)),
    "chelsea": ((0, 300, 70, 370), (0.50, 0.52, 0.32, 0.34)),
}
# Textures: which symmetries leave the texture statistically the same (brick rows have a
# direction, so no 90-degree rotations there).
_TEXTURE_ROT90 = {"brick": False, "grass": True, "gravel": True}


def check_source(source: str) -> str:
    """The kind ("texture" or "object") of a synthetic source; DataError naming the choices otherwise."""
    if source not in SYNTHETIC_SOURCES:
        raise DataError(f"unknown synthetic source {source!r}; choose from {', '.join(SYNTHETIC_SOURCES)}")
    return SYNTHETIC_SOURCES[source]


def defect_region(source: str) -> tuple[float, float, float, float] | None:
    """Where defects land: the object's ellipse (centre row, centre col, radius row, radius col; relative to
    the image side), or None for a texture (anywhere off the border)."""
    return _OBJECT_CROPS[source][1] if check_source(source) == "object" else None


@functools.cache
def _source_image(name: str) -> np.ndarray:
    """The scikit-image photo as float32 (H, W, C) in [0, 1] (C = 1 for grey textures)."""
    arr = getattr(skdata, name)()
    arr = arr.astype(np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr[..., :3]


@functools.lru_cache(maxsize=16)
def _object_base(name: str, size: int) -> np.ndarray:
    """The object's square crop resized to ``size`` (computed once per category)."""
    (r0, r1, c0, c1), _ = _OBJECT_CROPS[name]
    crop = _source_image(name)[r0:r1, c0:c1]
    return transform.resize(crop, (size, size), order=1, anti_aliasing=True).astype(np.float32)


def texture_crop(name: str, size: int, rng: np.random.Generator, base_crop: float = 0.5) -> np.ndarray:
    """Random crop (scale-jittered, flipped/rotated where allowed) of a texture, resized to size."""
    src = _source_image(name)
    h, w = src.shape[:2]
    side = int(round(min(h, w) * base_crop * rng.uniform(0.9, 1.1)))
    r = int(rng.integers(0, h - side + 1))
    c = int(rng.integers(0, w - side + 1))
    out = transform.resize(src[r : r + side, c : c + side], (size, size), order=1, anti_aliasing=True)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    if _TEXTURE_ROT90.get(name, False):
        out = np.rot90(out, int(rng.integers(0, 4)))
    return np.ascontiguousarray(out, dtype=np.float32)


def _object_view(name: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """The part as a production-line camera would see it: small shift, rotation, scale."""
    base = _object_base(name, size)
    centre = np.array([size / 2.0, size / 2.0])
    angle = np.deg2rad(rng.uniform(-3.0, 3.0))
    scale = rng.uniform(0.98, 1.02)
    shift = rng.uniform(-0.03, 0.03, size=2) * size
    # Rotate/scale about the image centre, then shift (warp wants the output->input map).
    tf = (
        transform.SimilarityTransform(translation=-centre)
        + transform.SimilarityTransform(rotation=angle, scale=scale)
        + transform.SimilarityTransform(translation=centre + shift)
    )
    out = transform.warp(base, tf.inverse, order=1, mode="edge", preserve_range=True)
    return out.astype(np.float32)


def make_normal_image(source: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One defect-free float32 (H, W, C) image of ``source`` (C = 1 textures, 3 objects)."""
    kind = check_source(source)
    img = texture_crop(source, size, rng) if kind == "texture" else _object_view(source, size, rng)
    # Lighting: gain and offset jitter; then mild sensor noise so no two images are identical.
    img = img * rng.uniform(0.95, 1.05) + rng.uniform(-0.02, 0.02)
    img = img + rng.normal(0.0, 0.008, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)
