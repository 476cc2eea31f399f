"""Synthetic-defect generator: writes MVTec-layout categories built from scikit-image's bundled photos.

Normal images vary the way real inspection images do (textures: different crops of the
surface with slight scale jitter and flips; objects: the same part with small shifts,
rotations and lighting changes, plus sensor noise). Anomalous test images add one defect on
top of a normal image; the ground-truth mask marks exactly the pixels the defect changed by
more than :data:`MASK_THRESHOLD` (holes inside a defect's footprint filled in), so no pixel
outside the mask differs from the defect-free image by more than that.

Everything is driven by ``numpy.random.default_rng`` seeded from ``(seed, source, split,
index)``, so the same arguments always give byte-identical files, and one image does not
depend on how many others are generated.
"""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import transform

from anomalens.errors import DataError
from anomalens.outputs import staged_directory, write_json

__all__ = [
    "DEFECT_TYPES",
    "MASK_THRESHOLD",
    "SYNTHETIC_SOURCES",
    "add_defect",
    "make_normal_image",
    "make_synthetic_category",
    "make_synthetic_dataset",
]

#: Category name -> "texture" or "object". All images ship inside the scikit-image wheel.
SYNTHETIC_SOURCES: dict[str, str] = {
    "brick": "texture",
    "grass": "texture",
    "gravel": "texture",
    "coffee": "object",
    "chelsea": "object",
}

#: Defect types, named like MVTec AD's.
DEFECT_TYPES: tuple[str, ...] = ("scratch", "stain", "hole", "patch")

#: A pixel belongs to the mask when the defect changed it by more than this (in [0, 1] units).
MASK_THRESHOLD = 0.04

# Allowed defect area as a fraction of the image (defects are re-drawn until they fit).
_MIN_AREA, _MAX_AREA = 0.002, 0.05
_MAX_TRIES = 25

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


def _rng(seed: int, source: str, split: str, index: int) -> np.random.Generator:
    # crc32 rather than hash(): Python's str hash is randomised per process.
    return np.random.default_rng([seed, zlib.crc32(source.encode()), zlib.crc32(split.encode()), index])


def _texture_crop(name: str, size: int, rng: np.random.Generator, base_crop: float = 0.5) -> np.ndarray:
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
    kind = _check_source(source)
    img = _texture_crop(source, size, rng) if kind == "texture" else _object_view(source, size, rng)
    # Lighting: gain and offset jitter; then mild sensor noise so no two images are identical.
    img = img * rng.uniform(0.95, 1.05) + rng.uniform(-0.02, 0.02)
    img = img + rng.normal(0.0, 0.008, size=img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Defects. Each returns an alpha map (H, W) in [0, 1] and the target image to blend towards.


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


def _irregular_ellipse(size: int, centre: np.ndarray, ra: float, rb: float, rng: np.random.Generator) -> np.ndarray:
    """Normalised radius field of a rotated ellipse with a wobbly outline (1 on the outline)."""
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
    return (rho / wobble).astype(np.float32)


def _stain(img: np.ndarray, rng: np.random.Generator, roi) -> tuple[np.ndarray, np.ndarray]:
    """A soft-edged blob that darkens, bleaches or tints the surface."""
    size = img.shape[0]
    ra = rng.uniform(0.05, 0.12) * size
    rb = ra * rng.uniform(0.5, 1.0)
    centre = _place(size, roi, 0.12 * size, rng)
    rho = _irregular_ellipse(size, centre, ra, rb, rng)
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
    size = img.shape[0]
    ra = rng.uniform(0.018, 0.05) * size
    rb = ra * rng.uniform(0.5, 1.0)
    centre = _place(size, roi, 0.08 * size, rng)
    rho = _irregular_ellipse(size, centre, ra, rb, rng)
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
        donor = _texture_crop(str(rng.choice(others)), size, rng)
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


_DEFECTS: dict[str, Callable[..., tuple[np.ndarray, np.ndarray]]] = {
    "scratch": _scratch,
    "stain": _stain,
    "hole": _hole,
    "patch": _patch,
}


def _check_source(source: str) -> str:
    if source not in SYNTHETIC_SOURCES:
        raise DataError(f"unknown synthetic source {source!r}; choose from {', '.join(SYNTHETIC_SOURCES)}")
    return SYNTHETIC_SOURCES[source]


def add_defect(
    image: np.ndarray, defect_type: str, rng: np.random.Generator, source: str = "brick"
) -> tuple[np.ndarray, np.ndarray]:
    """Add one ``defect_type`` defect to a float (H, W, C) image; returns (image, bool mask).

    The mask is the set of pixels changed by more than :data:`MASK_THRESHOLD` (with holes in
    the defect footprint filled); the defect is redrawn until its mask covers 0.2%-5% of the
    image. ``source`` selects the defect region (on the part for objects) and the donor
    material for ``patch``.
    """
    if defect_type not in _DEFECTS:
        raise DataError(f"unknown defect type {defect_type!r}; choose from {', '.join(DEFECT_TYPES)}")
    kind = _check_source(source)
    size = image.shape[0]
    roi = _OBJECT_CROPS[source][1] if kind == "object" else None
    best: tuple[np.ndarray, np.ndarray] | None = None
    best_err = np.inf
    for _ in range(_MAX_TRIES):
        if defect_type == "patch":
            alpha, target = _patch(image, rng, roi, source)
        else:
            alpha, target = _DEFECTS[defect_type](image, rng, roi)
        # Quantised to 8 bits here, so the mask describes exactly the pixels that get stored.
        out = _quantise(image * (1 - alpha[..., None]) + target * alpha[..., None])
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


# --------------------------------------------------------------------------------------------
# Writing a category


def _save_png(arr: np.ndarray, path: Path) -> None:
    """float [0, 1] (H, W, 1|3) or bool (H, W) -> 8-bit PNG (no metadata, so bytes are stable)."""
    if arr.dtype == np.bool_:
        pixels = arr.astype(np.uint8) * 255
    else:
        pixels = np.round(np.clip(arr, 0, 1) * 255).astype(np.uint8)
        if pixels.shape[-1] == 1:
            pixels = pixels[..., 0]
    # Level 1: encoding dominates generation time and noisy images barely compress anyway.
    Image.fromarray(pixels).save(path, format="PNG", compress_level=1)


def _quantise(img: np.ndarray) -> np.ndarray:
    """Round to the 8-bit values the PNG will hold, so masks are computed on stored pixels."""
    return (np.round(np.clip(img, 0, 1) * 255) / 255).astype(np.float32)


def make_synthetic_category(
    out_dir: str | Path,
    source: str = "brick",
    n_train: int = 60,
    n_test_good: int = 20,
    n_test_defect: int = 30,
    image_size: int = 256,
    seed: int = 0,
    defect_types: Sequence[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write an MVTec-AD-layout category ``out_dir/<source>`` and return its path.

    Layout: ``train/good/000.png ...``, ``test/good/``, ``test/<defect>/`` (the
    ``n_test_defect`` images are spread round-robin over ``defect_types``, default all of
    :data:`DEFECT_TYPES`) and ``ground_truth/<defect>/<stem>_mask.png`` (uint8 0/255).
    Textures are written as greyscale PNGs, objects as RGB. The folder is built beside the
    target and renamed into place, so an interrupted run leaves nothing half-written; an
    existing category raises DataError unless ``overwrite=True``.
    """
    _check_source(source)
    defects = list(DEFECT_TYPES if defect_types is None else defect_types)
    if not defects and n_test_defect:
        raise DataError("defect_types is empty but n_test_defect > 0")
    for d in defects:
        if d not in _DEFECTS:
            raise DataError(f"unknown defect type {d!r}; choose from {', '.join(DEFECT_TYPES)}")
    if len(set(defects)) != len(defects):
        raise DataError(f"defect_types has duplicates: {defects}")
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise DataError("n_train must be >= 1 and n_test_good, n_test_defect >= 0")
    if not 32 <= image_size <= 1024:
        raise DataError(f"image_size must be between 32 and 1024, got {image_size}")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / source
    if final.exists() and not overwrite:
        raise DataError(f"{final}: already exists; pass overwrite=True to replace it")

    width = max(3, len(str(max(n_train, n_test_good, n_test_defect) - 1)))
    with staged_directory(final, overwrite=overwrite, kind="dataset") as tmp:
        train_dir = tmp / "train" / "good"
        train_dir.mkdir(parents=True)
        for i in range(n_train):
            img = make_normal_image(source, image_size, _rng(seed, source, "train", i))
            _save_png(img, train_dir / f"{i:0{width}d}.png")
        good_dir = tmp / "test" / "good"
        good_dir.mkdir(parents=True)
        for i in range(n_test_good):
            img = make_normal_image(source, image_size, _rng(seed, source, "test/good", i))
            _save_png(img, good_dir / f"{i:0{width}d}.png")
        counters = dict.fromkeys(defects, 0)
        for i in range(n_test_defect):
            defect = defects[i % len(defects)]
            k = counters[defect]
            counters[defect] += 1
            rng = _rng(seed, source, f"test/{defect}", k)
            clean = _quantise(make_normal_image(source, image_size, rng))
            img, mask = add_defect(clean, defect, rng, source)
            for sub in ("test", "ground_truth"):
                (tmp / sub / defect).mkdir(parents=True, exist_ok=True)
            _save_png(img, tmp / "test" / defect / f"{k:0{width}d}.png")
            _save_png(mask, tmp / "ground_truth" / defect / f"{k:0{width}d}_mask.png")
        info = {
            "generator": "anomalens.data.synthetic",
            "source": source,
            "kind": SYNTHETIC_SOURCES[source],
            "seed": seed,
            "image_size": image_size,
            "n_train": n_train,
            "n_test_good": n_test_good,
            "n_test_defect": n_test_defect,
            "defect_types": defects,
        }
        write_json(tmp / "synthetic.json", info)
    return final


def make_synthetic_dataset(
    out_dir: str | Path, sources: Iterable[str] = tuple(SYNTHETIC_SOURCES), **kw: object
) -> list[Path]:
    """Write several categories (default: all of :data:`SYNTHETIC_SOURCES`); returns their paths.

    Keyword arguments are those of :func:`make_synthetic_category`.
    """
    sources = list(sources)
    for s in sources:
        _check_source(s)
    return [make_synthetic_category(out_dir, source=s, **kw) for s in sources]  # type: ignore[arg-type]
