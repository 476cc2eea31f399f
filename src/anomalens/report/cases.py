"""The report's cases: which test images it shows (the anomalous ones scoring lowest, the normal ones scoring
highest, the clearest detections) and their pictures — a full case figure and a thumbnail each, drawn with
Pillow (:mod:`anomalens.report.annotated`). The pictures need the images, maps and scores, never the metrics,
so ``anomalens test`` draws them in a forked process while it computes the metrics. And scores.csv, the
report's one row per image."""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from anomalens.outputs.atomic import atomic_path
from anomalens.report.annotated import case_figure, case_thumbnail
from anomalens.report.templating import write_text_atomic

__all__ = ["CaseChoice", "choose_cases", "shown_pictures", "draw_cases", "case_entry", "case_verdict",
           "write_scores_csv", "THUMBNAIL_PX", "PREVIEW_FILE"]

THUMBNAIL_PX = 200
PREVIEW_FILE = "cases/preview.png"


@dataclass(frozen=True)
class CaseChoice:
    """The images a report shows: ``groups`` [(heading, explanation, image indices, text when empty)] in page
    order, ``shown`` every shown index once (in group order), ``preview`` the index whose thumbnail is
    ``cases/preview.png`` (the clearest detection; the highest-scoring image without anomalies)."""

    groups: list[tuple[str, str, list[int], str]]
    shown: list[int]
    preview: int


def choose_cases(y: np.ndarray, s: np.ndarray, n_cases: int) -> CaseChoice:
    """At most ``n_cases`` per group: the anomalous images with the lowest scores (missed or nearly), the
    normal images with the highest (false alarms or nearly), the anomalous images with the highest scores
    not already shown."""
    anom = np.flatnonzero(y == 1)
    norm = np.flatnonzero(y == 0)
    k = max(int(n_cases), 0)
    low_anom = anom[np.argsort(s[anom], kind="stable")][:k]
    high_norm = norm[np.argsort(-s[norm], kind="stable")][:k]
    shown = set(low_anom.tolist())
    high_anom = [i for i in anom[np.argsort(-s[anom], kind="stable")] if i not in shown][:k]
    # Each image is rendered once, even if it would appear in two groups.
    shown_cases = list(dict.fromkeys(int(i) for i in (*low_anom, *high_norm, *high_anom)))
    # The picture for index pages: the clearest detection; it is always among the shown cases when k >= 1.
    pool = anom if anom.size else np.arange(y.size)
    groups = [
        ("Lowest-scoring anomalous images",
         "Defects the detector is least sure about; MISSED = not flagged.",
         [int(i) for i in low_anom], "no anomalous images in this test set"),
        ("Highest-scoring normal images",
         "Normal images that look most anomalous; FALSE ALARM = flagged.",
         [int(i) for i in high_norm], "no normal images in this test set"),
        ("Clearest detections",
         "The anomalous images with the highest scores (not shown already).",
         [int(i) for i in high_anom],
         "no further anomalous images (all are shown)" if anom.size else "no anomalous images in this test set"),
    ]
    return CaseChoice(groups=groups, shown=shown_cases, preview=int(pool[np.argmax(s[pool])]))


def shown_pictures(choice: CaseChoice, load_image: Callable[[int], np.ndarray], amaps: np.ndarray | None,
                   gts: np.ndarray | None,
                   load_reconstructions: Callable[[list[int]], Sequence[np.ndarray]] | None,
                   ) -> tuple[list[np.ndarray], Sequence[np.ndarray | None]]:
    """The shown images (checked against the maps' size) and their reconstructions (None each without
    ``load_reconstructions``), read here: the loaders may need the model, which a forked process must not run."""
    images = [_checked_image(load_image, i, amaps, gts) for i in choice.shown]
    reconstructions: Sequence[np.ndarray | None] = [None] * len(choice.shown)
    if load_reconstructions is not None and choice.shown:
        reconstructions = list(load_reconstructions(choice.shown))
        if len(reconstructions) != len(choice.shown):
            raise ValueError(f"load_reconstructions returned {len(reconstructions)} images for "
                             f"{len(choice.shown)} indices")
    return images, reconstructions


def draw_cases(
    out: Path, choice: CaseChoice, images: Sequence[np.ndarray], reconstructions: Sequence[np.ndarray | None],
    names: Sequence[str], defect_types: Sequence[str], y: np.ndarray, s: np.ndarray, threshold: float,
    flagged: np.ndarray, amaps: np.ndarray | None, gts: np.ndarray | None, pixel_threshold: float | None,
    vrange: tuple[float, float] | None,
) -> dict[int, tuple[str, str, tuple[int, int]]]:
    """Draw the shown cases into ``out/cases``: {image index: (figure, thumbnail, thumbnail size)}. A case costs
    ~50 ms with Pillow, reading the image and writing the PNGs included (a matplotlib figure cost ~0.3 s)."""
    return {
        i: _render_case(i, out / "cases", str(names[i]), str(defect_types[i]), int(y[i]), float(s[i]), threshold,
                        bool(flagged[i]), image, None if amaps is None else amaps[i], None if gts is None else gts[i],
                        pixel_threshold, vrange, reconstruction, i == choice.preview)
        for i, image, reconstruction in zip(choice.shown, images, reconstructions)
    }


def _safe_stem(name: str) -> str:
    """File-name-safe form of an image name, without its extension."""
    name = re.sub(r"\.(png|jpe?g|bmp|tiff?|webp)$", "", name, flags=re.IGNORECASE)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem[:60] or "image"


def case_verdict(label: int, flagged: bool) -> tuple[str, bool]:
    """(plain-language outcome, is it an error)."""
    if label == 1:
        return ("detected", False) if flagged else ("MISSED", True)
    return ("FALSE ALARM", True) if flagged else ("correctly passed", False)


def _save_png(picture: np.ndarray, path: Path) -> None:
    """Write a uint8 picture as PNG via a temporary file + rename (never a half-written file). zlib level 1:
    a quarter of the default level's time (the encoding was most of a case's cost) for files ~15 % larger."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG", compress_level=1)


def case_entry(i: int, names: Sequence[str], defect_types: Sequence[str], y: np.ndarray, s: np.ndarray,
               flagged: np.ndarray, files: tuple[str, str, tuple[int, int]]) -> dict[str, object]:
    verdict, wrong = case_verdict(int(y[i]), bool(flagged[i]))
    full, thumb, (width, height) = files
    return {"full": full, "thumb": thumb, "width": width, "height": height, "name": str(names[i]),
            "defect_type": str(defect_types[i]), "score": float(s[i]), "verdict": verdict, "wrong": wrong}


def _checked_image(load_image: Callable[[int], np.ndarray], i: int, amaps: np.ndarray | None,
                   gts: np.ndarray | None) -> np.ndarray:
    image = np.asarray(load_image(i))
    size = amaps.shape[1:] if amaps is not None else gts.shape[1:] if gts is not None else None
    if size is not None and image.shape[:2] != size:
        raise ValueError(
            f"load_image({i}) returned an image of size {image.shape[:2]}, "
            f"but the maps/masks are {size}: images must be at the maps' resolution"
        )
    return image


def _render_case(
    i: int, cases_dir: Path, name: str, defect_type: str, label: int, score: float, threshold: float,
    flagged: bool, image: np.ndarray, amap: np.ndarray | None, gt: np.ndarray | None,
    pixel_threshold: float | None, vrange: tuple[float, float] | None,
    reconstruction: np.ndarray | None = None, preview: bool = False,
) -> tuple[str, str, tuple[int, int]]:
    """Render the case figure and the thumbnail of image ``i`` (and the preview when ``preview``);
    returns (figure path, thumbnail path, thumbnail (width, height)), paths relative to the report."""
    verdict, wrong = case_verdict(label, flagged)
    image = np.ascontiguousarray(image)  # a loader may hand a transposed view: read twice below, copied once
    short = name if len(name) <= 50 else "..." + name[-47:]
    rel = "> " if score > threshold else "≤ "
    fig_title = (
        f"{short}  ·  {defect_type}  ·  label: {'anomalous' if label else 'normal'}\n"
        f"score {score:.4g} {rel}threshold {threshold:.4g}  →  {verdict}"
    )
    pred = amap > pixel_threshold if (amap is not None and pixel_threshold is not None) else None
    stem = f"{i:05d}_{_safe_stem(name)}"
    rel_path = f"cases/{stem}.png"
    vmin, vmax = vrange if vrange else (None, None)
    figure = case_figure(image, title=fig_title, amap=amap, vmin=vmin, vmax=vmax, predicted_mask=pred, true_mask=gt,
                         wrong=wrong, pixel_threshold=pixel_threshold, reconstruction=reconstruction)
    _save_png(figure, cases_dir.parent / rel_path)
    thumb = case_thumbnail(image, amap, vmin, vmax, predicted_mask=pred, true_mask=gt, size=THUMBNAIL_PX)
    thumb_path = f"cases/{stem}_thumb.png"
    for target in [thumb_path] + ([PREVIEW_FILE] if preview else []):
        _save_png(thumb, cases_dir.parent / target)
    return rel_path, thumb_path, (thumb.shape[1], thumb.shape[0])


def write_scores_csv(
    path: Path, names: Sequence[str], defect_types: Sequence[str],
    y: np.ndarray, s: np.ndarray, flagged: np.ndarray, normalized: np.ndarray | None = None,
) -> None:
    """One row per image; ``normalized_score`` (0.5 at the threshold) follows ``score`` when it is given."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    extra = ["normalized_score"] if normalized is not None else []
    w.writerow(["name", "defect_type", "label", "score", *extra, "predicted", "correct"])
    for i, (name, dtype_, label, score, pred) in enumerate(zip(names, defect_types, y, s, flagged)):
        norm = [repr(float(normalized[i]))] if normalized is not None else []
        w.writerow([name, dtype_, int(label), repr(float(score)), *norm, int(pred), int(int(pred) == label)])
    write_text_atomic(path, buf.getvalue())
