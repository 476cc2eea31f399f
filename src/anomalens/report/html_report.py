"""The test report: scores.csv, plots, case figures and report.html tying them together."""

from __future__ import annotations

import csv
import html
import io
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
from numpy.typing import ArrayLike

from anomalens.report.overlay import heatmap_range
from anomalens.report.plots import (
    plot_case,
    plot_loss_curves,
    plot_roc,
    plot_score_histogram,
)

__all__ = ["write_test_report"]

# Plain-language meaning of the metrics `anomalens.metrics.evaluate` returns.
METRIC_HELP: dict[str, str] = {
    "image_auroc": "how well image scores rank anomalous above normal (1 = perfect, 0.5 = chance)",
    "image_aupr": "average precision, anomalous = positive (1 = perfect)",
    "image_f1_max": "best F1 over all thresholds (what a tuned threshold could reach)",
    "image_f1_max_threshold": "threshold giving that best F1 (score > threshold)",
    "tp": "anomalous images flagged (at the report threshold)",
    "fp": "normal images flagged: false alarms",
    "tn": "normal images passed",
    "fn": "anomalous images passed: missed defects",
    "tpr": "fraction of anomalous images flagged (recall)",
    "tnr": "fraction of normal images passed",
    "balanced_accuracy": "(TPR + TNR) / 2",
    "precision": "fraction of flagged images that are anomalous",
    "f1": "F1 at the report threshold",
    "threshold": "image threshold used: flagged when score > threshold",
    "pixel_auroc": "AUROC over all pixels (defect vs normal pixels)",
    "aupro": "area under the per-region-overlap curve up to FPR 0.3, normalised (1 = perfect)",
}

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #222; line-height: 1.45; }
h1 { margin-bottom: 0.2em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.95em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.7em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; font-size: 0.92em; }
.plots img { max-width: 100%; margin: 0.5em 1em 0.5em 0; vertical-align: top; }
figure { margin: 0.8em 0 1.4em 0; } figure img { max-width: 100%; }
figcaption { font-size: 0.9em; color: #444; }
.bad { color: #b00020; font-weight: 600; } .good { color: #1b5e20; }
"""


# --------------------------------------------------------------------------- small helpers
def _write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary file + rename so readers never see a partial file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8", newline="")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _href(rel_path: str) -> str:
    """Relative link, URL-quoted then HTML-escaped."""
    return _e(quote(rel_path))


def _fmt(value: object) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return str(value)
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if math.isnan(v):
            return "n/a"
        # Rates and AUCs (in [0, 1]) with fixed decimals so they line up; others compact.
        return f"{v:.4f}" if 0.0 <= abs(v) <= 1.0 else f"{v:.6g}"
    return str(value)


def _safe_stem(name: str) -> str:
    """File-name-safe form of an image name, without its extension."""
    name = re.sub(r"\.(png|jpe?g|bmp|tiff?|webp)$", "", name, flags=re.IGNORECASE)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return stem[:60] or "image"


def _verdict(label: int, flagged: bool) -> tuple[str, bool]:
    """(plain-language outcome, is it an error)."""
    if label == 1:
        return ("detected", False) if flagged else ("MISSED", True)
    return ("FALSE ALARM", True) if flagged else ("correctly passed", False)


# --------------------------------------------------------------------------- main entry
def write_test_report(
    out_dir: str | os.PathLike[str],
    *,
    names: Sequence[str],
    defect_types: Sequence[str],
    labels: ArrayLike,
    scores: ArrayLike,
    threshold: float,
    metrics: Mapping[str, object],
    load_image: Callable[[int], np.ndarray],
    maps: ArrayLike | None = None,
    masks: ArrayLike | None = None,
    pixel_threshold: float | None = None,
    title: str = "anomalens test report",
    loss_curves: Mapping[str, Sequence[float]] | None = None,
    n_cases: int = 6,
    load_reconstructions: Callable[[list[int]], Sequence[np.ndarray]] | None = None,
    normalized_scores: ArrayLike | None = None,
) -> Path:
    """Write a self-contained test report into ``out_dir`` and return the path of report.html.

    Files: ``scores.csv`` (name, defect_type, label, score, predicted,
    correct; predicted = score > threshold, 0/1), ``roc.png`` (only with both
    classes), ``score_histogram.png``, ``loss_curves.png`` (when
    ``loss_curves`` is given), ``cases/*.png`` and ``report.html``.

    Case figures (at most ``n_cases`` per group): *hardest cases* = the
    anomalous images with the lowest scores and the normal images with the
    highest scores; *clearest detections* = the anomalous images with the
    highest scores (not already shown).  ``load_image(i)`` must return image
    ``i`` as float (H, W, 3) in [0, 1] at the resolution of ``maps``; it is
    only called for the images shown.  All heatmaps share one colour range
    (see :func:`anomalens.report.overlay.heatmap_range`).  For autoencoders,
    ``load_reconstructions(indices)`` returns the model's outputs for the
    shown images, in that order ((H, W) or (H, W, 1|3) in [0, 1]), from one
    call, so a model batches its work (AnoGAN's latent search); the case
    figures are then the input / reconstruction / residual triplets.

    Re-running into the same ``out_dir`` replaces the previous report: its
    report.html is removed first, then its roc.png, loss_curves.png and
    ``cases/*.png``; the new report.html is written last, so a crash never
    leaves a report pointing at missing files.
    """
    out = Path(out_dir)
    y = np.asarray(labels).reshape(-1).astype(np.int64)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = len(names)
    if not (len(defect_types) == n == y.size == s.size) or n == 0:
        raise ValueError(
            f"names ({n}), defect_types ({len(defect_types)}), labels ({y.size}) and "
            f"scores ({s.size}) must have the same non-zero length"
        )
    if not np.isin(y, (0, 1)).all() or not np.isfinite(s).all():
        raise ValueError("labels must be 0/1 and scores finite")
    amaps = None if maps is None else np.asarray(maps)
    gts = None if masks is None else np.asarray(masks).astype(bool, copy=False)
    if amaps is not None and (amaps.ndim != 3 or amaps.shape[0] != n):
        raise ValueError(f"maps must be (N={n}, H, W), got {amaps.shape}")
    if gts is not None and (gts.ndim != 3 or gts.shape[0] != n):
        raise ValueError(f"masks must be (N={n}, H, W), got {gts.shape}")
    if amaps is not None and gts is not None and amaps.shape != gts.shape:
        raise ValueError(f"maps {amaps.shape} and masks {gts.shape} differ in shape")

    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "report.html"
    cases_dir = out / "cases"
    # Remove the old report *before* touching the files it links to.
    report_path.unlink(missing_ok=True)
    if cases_dir.is_dir():
        for old in cases_dir.glob("*.png"):
            old.unlink()
    for stale in ("roc.png", "loss_curves.png"):
        (out / stale).unlink(missing_ok=True)
    cases_dir.mkdir(exist_ok=True)

    flagged = s > threshold
    normalized = None if normalized_scores is None else np.asarray(normalized_scores, dtype=np.float64).ravel()
    _write_scores_csv(out / "scores.csv", names, defect_types, y, s, flagged, normalized)

    both_classes = bool((y == 1).any() and (y == 0).any())
    if both_classes:
        plot_roc(y, s, out / "roc.png", title="ROC curve (image level)", threshold=threshold)
    plot_score_histogram(
        y, s, threshold, out / "score_histogram.png",
        title="Image anomaly scores" + (": normal vs anomalous" if both_classes else ""),
    )
    if loss_curves:
        plot_loss_curves(loss_curves, out / "loss_curves.png")

    vrange = heatmap_range(amaps, y) if amaps is not None else None

    # ---- case selection
    anom = np.flatnonzero(y == 1)
    norm = np.flatnonzero(y == 0)
    k = max(int(n_cases), 0)
    low_anom = anom[np.argsort(s[anom], kind="stable")][:k]
    high_norm = norm[np.argsort(-s[norm], kind="stable")][:k]
    shown = set(low_anom.tolist())
    high_anom = [i for i in anom[np.argsort(-s[anom], kind="stable")] if i not in shown][:k]

    # Each image is rendered once, even if it would appear in two groups.
    shown_cases = list(dict.fromkeys(int(i) for i in (*low_anom, *high_norm, *high_anom)))
    reconstructions: Sequence[np.ndarray | None] = [None] * len(shown_cases)
    if load_reconstructions is not None and shown_cases:
        reconstructions = list(load_reconstructions(shown_cases))
        if len(reconstructions) != len(shown_cases):
            raise ValueError(f"load_reconstructions returned {len(reconstructions)} images for {len(shown_cases)} indices")
    # The pictures are read here (only the shown ones), the figures drawn in parallel: matplotlib takes
    # ~0.3 s a figure and most of `anomalens test`'s time went to them.
    tasks = [
        (i, cases_dir, str(names[i]), str(defect_types[i]), int(y[i]), float(s[i]), threshold, bool(flagged[i]),
         _checked_image(load_image, i, amaps, gts), None if amaps is None else amaps[i],
         None if gts is None else gts[i], pixel_threshold, vrange, reconstruction)
        for i, reconstruction in zip(shown_cases, reconstructions)
    ]
    case_files = dict(zip(shown_cases, _render_cases(tasks)))

    groups = [
        ("Hardest cases: anomalous images with the lowest scores",
         "Defects the detector is least sure about; any marked MISSED scored at or below the threshold.",
         [int(i) for i in low_anom], "no anomalous images in this test set"),
        ("Hardest cases: normal images with the highest scores",
         "Normal images that look most anomalous to the detector; any marked FALSE ALARM scored above the threshold.",
         [int(i) for i in high_norm], "no normal images in this test set"),
        ("Clearest detections: anomalous images with the highest scores",
         "What the detector finds most obvious.",
         [int(i) for i in high_anom],
         "no further anomalous images (all are shown above)" if anom.size else "no anomalous images in this test set"),
    ]

    page = _render_html(
        title=title, metrics=metrics, y=y, s=s, flagged=flagged, defect_types=defect_types,
        names=names, threshold=threshold, has_roc=both_classes, has_loss=bool(loss_curves),
        has_maps=amaps is not None, has_masks=gts is not None, vrange=vrange,
        pixel_threshold=pixel_threshold, groups=groups, case_files=case_files,
    )
    _write_text_atomic(report_path, page)  # last: everything it links to exists now
    return report_path


def _write_scores_csv(
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
    _write_text_atomic(path, buf.getvalue())


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


def _render_cases(tasks: list[tuple]) -> list[str]:
    """Draw the case figures, in forked processes when there are several and more than one core."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    workers = min(cores, 8, len(tasks))
    if workers < 2 or len(tasks) < 4:
        return [_render_case(*task) for task in tasks]
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    try:
        context = multiprocessing.get_context("fork")  # the figures need nothing re-imported
    except ValueError:
        return [_render_case(*task) for task in tasks]
    try:
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            return list(pool.map(_render_case_task, tasks))
    except (BrokenProcessPool, OSError):  # no processes to be had (limits, memory): draw them here
        return [_render_case(*task) for task in tasks]


def _render_case_task(task: tuple) -> str:
    return _render_case(*task)


def _render_case(
    i: int, cases_dir: Path, name: str, defect_type: str, label: int, score: float, threshold: float,
    flagged: bool, image: np.ndarray, amap: np.ndarray | None, gt: np.ndarray | None,
    pixel_threshold: float | None, vrange: tuple[float, float] | None,
    reconstruction: np.ndarray | None = None,
) -> str:
    """Render the case figure of image ``i``; returns its path relative to the report."""
    verdict, wrong = _verdict(label, flagged)
    short = name if len(name) <= 50 else "..." + name[-47:]
    rel = "> " if flagged else "≤ "
    fig_title = (
        f"{short}  ·  {defect_type}  ·  label: {'anomalous' if label else 'normal'}\n"
        f"score {score:.4g} {rel}threshold {threshold:.4g}  →  {verdict}"
    )
    pred = amap > pixel_threshold if (amap is not None and pixel_threshold is not None) else None
    rel_path = f"cases/{i:05d}_{_safe_stem(name)}.png"
    plot_case(
        image, cases_dir.parent / rel_path, title=fig_title, amap=amap,
        vmin=vrange[0] if vrange else None, vmax=vrange[1] if vrange else None,
        pred_mask=pred, mask=gt,
        title_color="#b00020" if wrong else "black",
        reconstruction=reconstruction,
    )
    return rel_path


def _render_html(
    *, title: str, metrics: Mapping[str, object], y: np.ndarray, s: np.ndarray,
    flagged: np.ndarray, defect_types: Sequence[str], names: Sequence[str], threshold: float,
    has_roc: bool, has_loss: bool, has_maps: bool, has_masks: bool,
    vrange: tuple[float, float] | None, pixel_threshold: float | None,
    groups: list[tuple[str, str, list[int], str]], case_files: dict[int, str],
) -> str:
    n_anom = int((y == 1).sum())
    n_norm = int((y == 0).sum())
    n_missed = int(((y == 1) & ~flagged).sum())
    n_false = int(((y == 0) & flagged).sum())
    parts: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f"<p>{y.size} test images: {n_norm} normal, {n_anom} anomalous. "
        f"An image is flagged anomalous when its score &gt; <b>{threshold:.6g}</b>. "
        f'At this threshold: <span class="{"bad" if n_missed else "good"}">{n_missed} missed defect(s)</span>, '
        f'<span class="{"bad" if n_false else "good"}">{n_false} false alarm(s)</span>. '
        f'Per-image scores: <a href="scores.csv">scores.csv</a>.</p>',
    ]

    # ---- metrics
    parts.append("<h2>Metrics</h2><table><tr><th>metric</th><th>value</th><th>meaning</th></tr>")
    for key, value in metrics.items():
        parts.append(
            f'<tr><td>{_e(key)}</td><td class="num">{_e(_fmt(value))}</td>'
            f"<td>{_e(METRIC_HELP.get(key, ''))}</td></tr>"
        )
    parts.append("</table>")
    if any(isinstance(v, float) and math.isnan(v) for v in metrics.values()):
        parts.append('<p class="note">n/a: undefined for this test set '
                     "(e.g. AUROC needs both normal and anomalous images).</p>")

    # ---- per defect type
    parts.append("<h2>Per defect type</h2><table><tr><th>defect type</th><th>label</th>"
                 "<th>images</th><th>flagged anomalous</th><th>median score</th></tr>")
    types = np.asarray([str(t) for t in defect_types])
    for t in dict.fromkeys(types.tolist()):  # first-seen order
        sel = types == t
        labs = sorted(set(y[sel].tolist()))
        lab_txt = "/".join("anomalous" if v else "normal" for v in labs)
        n_sel = int(sel.sum())
        n_flag = int(flagged[sel].sum())
        parts.append(
            f"<tr><td>{_e(t)}</td><td>{lab_txt}</td><td class='num'>{n_sel}</td>"
            f"<td class='num'>{n_flag} ({n_flag / n_sel:.0%})</td>"
            f"<td class='num'>{np.median(s[sel]):.4g}</td></tr>"
        )
    parts.append("</table>")

    # ---- plots
    parts.append('<h2>Score distribution</h2><div class="plots">')
    parts.append('<img src="score_histogram.png" alt="histogram of image scores, normal vs anomalous, '
                 'with the threshold">')
    if has_roc:
        parts.append('<img src="roc.png" alt="ROC curve of image scores">')
    parts.append("</div>")
    if not has_roc:
        parts.append('<p class="note">No ROC curve: it needs both normal and anomalous images.</p>')
    if has_loss:
        parts.append('<h2>Training</h2><div class="plots">'
                     '<img src="loss_curves.png" alt="loss curves per epoch"></div>')

    # ---- cases
    parts.append("<h2>Example images</h2>")
    if has_maps and vrange is not None:
        parts.append(
            f'<p class="note">All heatmaps use one fixed colour range [{vrange[0]:.4g}, {vrange[1]:.4g}] '
            "(low end: 1st percentile of the normal images' maps; high end: 99.9th percentile of all maps), "
            "so colours are comparable across images: blue = typical of normal images, red = most anomalous."
            + (f" White outline: predicted defect region (map &gt; {pixel_threshold:.4g})."
               if pixel_threshold is not None else "")
            + "</p>"
        )
    else:
        parts.append('<p class="note">No heatmaps: this detector gives image-level scores only.</p>')
    if has_masks:
        parts.append('<p class="note">Ground truth: green outline of the annotated defect.</p>')
    else:
        parts.append('<p class="note">No ground-truth masks were given.</p>')

    for heading, explanation, idxs, empty in groups:
        parts.append(f"<h3>{_e(heading)}</h3><p class='note'>{_e(explanation)}</p>")
        if not idxs:
            parts.append(f"<p class='note'>({_e(empty)})</p>")
        for i in idxs:
            verdict, wrong = _verdict(int(y[i]), bool(flagged[i]))
            parts.append(
                f'<figure><img src="{_href(case_files[i])}" alt="{_e(names[i])}" loading="lazy">'
                f"<figcaption>{_e(names[i])} ({_e(defect_types[i])}): score {s[i]:.4g}, "
                f'<span class="{"bad" if wrong else "good"}">{_e(verdict)}</span></figcaption></figure>'
            )
    parts.append("</body></html>\n")
    return "\n".join(parts)
