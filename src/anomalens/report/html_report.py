"""The test report: scores.csv, plots, case figures and thumbnails, and report.html tying them together.

The page is built for the person who decides whether a model goes on the line, and fits on about two
1920 x 1080 screens: a one-line verdict, a box of warnings, the metrics in small tables by the question
they answer (how well does the score rank? what does the threshold do? how many of each? what ran?),
the metrics per defect type, the curves side by side, and the hardest cases as a grid of thumbnails
(each one opening its full figure). The HTML comes from a Jinja2 template with autoescaping
(:mod:`anomalens.report.templating`); this module only gathers the numbers and draws the pictures.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from anomalens.cores import available_cores
from anomalens.outputs.atomic import atomic_path
from anomalens.outputs.folders import remove_earlier_files
from anomalens.report.breakdown import PRO_FPR_LIMIT, per_defect_type_metrics
from anomalens.report.overlay import case_figure, case_thumbnail, heatmap_range
from anomalens.report.templating import format_number, render_page, write_text_atomic

__all__ = ["write_test_report", "METRIC_HELP", "FIGURE_FILES"]

# Plain-language meaning of the metrics `anomalens.metrics.evaluate` and `anomalens test` return; shown as
# the tooltip of each row.
METRIC_HELP: dict[str, str] = {
    "image_auroc": "how well image scores rank anomalous above normal (1 = perfect, 0.5 = chance)",
    "image_aupr": "average precision, anomalous = positive (1 = perfect; a random score gets the share of anomalous)",
    "image_f1_max": "best F1 over all thresholds (what a tuned threshold could reach)",
    "image_f1_max_threshold": "threshold giving that best F1 (score > threshold)",
    "pixel_auroc": "AUROC over all pixels (defect vs normal pixels)",
    "aupro": f"area under the per-region-overlap curve up to FPR {PRO_FPR_LIMIT:g}, normalised (1 = perfect)",
    "threshold": "image threshold used: flagged when score > threshold",
    "threshold_source": "where the threshold came from (fit: a quantile of normal scores; calibrate: labelled data)",
    "pixel_threshold": "a pixel is in the predicted defect (white outline) when its map value > this",
    "min_area": "minimum-area rule: an image is flagged when a predicted defect region has at least this many pixels",
    "tpr": "fraction of anomalous images flagged (recall)",
    "tnr": "fraction of normal images passed",
    "balanced_accuracy": "(TPR + TNR) / 2",
    "precision": "fraction of flagged images that are anomalous",
    "f1": "F1 at the report threshold",
    "tp": "anomalous images flagged",
    "fp": "normal images flagged: false alarms",
    "tn": "normal images passed",
    "fn": "anomalous images passed: missed defects",
    "detector": "the anomaly detector of the run",
    "backbone": "the pretrained feature extractor",
    "image_size": "the size images are resized to before scoring (height × width)",
    "device": "where the model ran",
    "images_per_second": "test images scored per second (decoding included)",
    "test_seconds": "time to score the test set",
    "layout": "how the data folder is laid out (mvtec, mvtec_loco, visa, ...)",
    "n_images": "test images",
    "n_anomalous": "anomalous test images",
}

# The metrics tables: (heading, [(key, label)], note). Keys absent from the metrics are left out.
_RANKING = ("How well the score ranks", [
    ("image_auroc", "Image AUROC"), ("image_aupr", "Image AP"), ("image_f1_max", "Best F1 (any threshold)"),
    ("image_f1_max_threshold", "Best-F1 threshold"), ("pixel_auroc", "Pixel AUROC"),
    ("aupro", f"AUPRO (FPR ≤ {PRO_FPR_LIMIT:g})"),
], "Threshold-free: 1 = perfect, 0.5 = chance (AUROC).")
_DECISION = ("The decision at the threshold", [
    ("threshold", "Image threshold"), ("threshold_source", "Threshold from"), ("pixel_threshold", "Pixel threshold"),
    ("min_area", "Minimum defect area (px)"), ("tpr", "TPR: defects flagged"), ("tnr", "TNR: normal passed"),
    ("balanced_accuracy", "Balanced accuracy"), ("precision", "Precision"), ("f1", "F1"),
], None)
_RUN = ("The run", [
    ("detector", "Detector"), ("backbone", "Backbone"), ("image_size", "Image size"), ("device", "Device"),
    ("images_per_second", "Images / s"), ("test_seconds", "Test time (s)"), ("layout", "Data layout"),
], None)
# Keys shown elsewhere on the page (summary, counts, per-type table, warnings) or not metrics at all.
_SHOWN_ELSEWHERE = {"tp", "fp", "tn", "fn", "n_images", "n_anomalous", "undefined", "per_defect_type", "warnings"}
_NORMALISED_NOTE = ("Normalised score (scores.csv, predict): 0.5 at the threshold, 0.05 for the median normal "
                    "image of the fit; above 0.5 = flagged.")

#: The figures a report writes next to report.html (removed first when a report is written again).
FIGURE_FILES = ("score_histogram.png", "roc.png", "precision_recall.png", "pixel_roc.png", "pro_curve.png",
                "loss_curves.png")
THUMBNAIL_PX = 200
PREVIEW_FILE = "cases/preview.png"


# --------------------------------------------------------------------------- small helpers
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


def _png_size(path: Path) -> tuple[int, int]:
    from PIL import Image

    with Image.open(path) as image:
        return image.size


def _save_png(picture: np.ndarray, path: Path) -> None:
    """Write a uint8 picture as PNG via a temporary file + rename (never a half-written file). zlib level 1:
    a quarter of the default level's time (the encoding was most of a case's cost) for files ~15 % larger."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(picture).save(tmp, format="PNG", compress_level=1)


class ForkedCall:
    """``fn(*args)`` run in a forked process while the caller goes on; ``result()`` waits for its return value
    (or raises its exception). The process inherits ``args`` as they are in memory (nothing is pickled on the
    way in, the maps may be hundreds of MB); only the return value comes back through a pipe. Runs it in
    place, at ``result()``, where forking pays nothing (one core) or cannot be had (no fork on this
    platform, no process left, the process died). Leaving the ``with`` block waits for the process, so
    nothing it writes lands after the caller has moved on."""

    def __init__(self, fn: Callable[..., object], *args: object) -> None:
        self._fn, self._args = fn, args
        self._process = self._receiver = None
        if available_cores() < 2:
            return
        import multiprocessing

        sender = None
        try:
            context = multiprocessing.get_context("fork")
            self._receiver, sender = context.Pipe(duplex=False)
            self._process = context.Process(target=_run_and_send, args=(sender, fn, args), daemon=True)
            self._process.start()
        except (ValueError, OSError, AssertionError):  # no fork here, no process to be had, or this process
            self.close()  # is a daemon (which multiprocessing lets have no children): run it in place
        finally:
            if sender is not None:
                sender.close()  # the child holds its own end: EOF here when it is gone

    def result(self):
        if self._process is None:
            return self._fn(*self._args)
        try:
            ok, value = self._receiver.recv()
        except (EOFError, OSError):  # the process died (memory, a signal) without an answer: do the work here
            self.close()
            return self._fn(*self._args)
        self.close()
        if not ok:
            raise value
        return value

    def close(self) -> None:
        if self._process is not None and self._process.pid is not None:
            self._process.join()
        if self._receiver is not None:
            self._receiver.close()
        self._process = self._receiver = None

    def __enter__(self) -> "ForkedCall":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _run_and_send(sender, fn: Callable[..., object], args: tuple) -> None:
    """The forked process of :class:`ForkedCall`: (True, return value) or (False, exception) into ``sender``."""
    try:
        answer = (True, fn(*args))
    except Exception as exc:  # handed to the parent, which raises it
        answer = (False, exc)
    try:
        sender.send(answer)
    except Exception as exc:  # an exception that cannot be pickled: its text
        sender.send((False, RuntimeError(f"{type(exc).__name__}: {exc}")))
    finally:
        sender.close()


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
    predicted: ArrayLike | None = None,
) -> Path:
    """Write a self-contained test report into ``out_dir`` and return the path of report.html.

    Files: ``scores.csv`` (name, defect_type, label, score, [normalized_score,] predicted, correct),
    ``score_histogram.png``; with both classes ``roc.png`` and ``precision_recall.png``; with maps and
    masks holding defect pixels ``pixel_roc.png`` and ``pro_curve.png``; ``loss_curves.png`` (when
    ``loss_curves`` is given); ``cases/*.png`` (a full figure and a ``*_thumb.png`` per case shown,
    and ``cases/preview.png``, the thumbnail of the highest-scoring anomalous image — of the
    highest-scoring image without anomalies — for index pages); and ``report.html``.

    ``predicted``: the detector's own decisions (1 = flagged) when they are not ``score > threshold``
    (the minimum-area rule); default ``scores > threshold``. ``metrics`` is shown grouped in tables;
    keys the report does not know go into an "Other" table. Two structured keys are read from it when
    present: ``per_defect_type`` (as :func:`anomalens.report.breakdown.per_defect_type_metrics` returns;
    computed here when absent) and ``warnings`` (sentences shown in a box at the top;
    :func:`anomalens.report.operator_warnings.report_warnings` makes them).

    Cases (at most ``n_cases`` per group): the anomalous images with the lowest scores (missed or
    nearly), the normal images with the highest scores (false alarms or nearly), and the anomalous
    images with the highest scores not already shown. ``load_image(i)`` must return image ``i`` as
    float (H, W, 3) in [0, 1] at the resolution of ``maps``; it is only called for the images shown.
    All heatmaps share one colour range (:func:`anomalens.report.overlay.heatmap_range`). For
    autoencoders, ``load_reconstructions(indices)`` returns the model's outputs for the shown images,
    in that order ((H, W) or (H, W, 1|3) in [0, 1]), from one call, so a model batches its work
    (AnoGAN's latent search); the full case figures are then input / reconstruction / residual.

    Re-running into the same ``out_dir`` replaces the previous report: its report.html is removed
    first, then its figures and ``cases/*.png``; the new report.html is written last, so a crash never
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
    flagged = s > threshold if predicted is None else np.asarray(predicted).reshape(-1) > 0
    if flagged.size != n:
        raise ValueError(f"predicted has {flagged.size} values for {n} images")

    out.mkdir(parents=True, exist_ok=True)
    report_path = out / "report.html"
    cases_dir = out / "cases"
    # The old report goes *before* the files it links to.
    remove_earlier_files(out, ["report.html"])
    remove_earlier_files(out, FIGURE_FILES, {"cases": "*.png"})
    cases_dir.mkdir(exist_ok=True)

    normalized = None if normalized_scores is None else np.asarray(normalized_scores, dtype=np.float64).ravel()
    _write_scores_csv(out / "scores.csv", names, defect_types, y, s, flagged, normalized)

    both_classes = bool((y == 1).any() and (y == 0).any())
    with_pixels = amaps is not None and gts is not None and bool(gts.any())
    vrange = heatmap_range(amaps, y) if amaps is not None else None
    # The curves (matplotlib: its import and ~0.2 s a figure) are drawn in a forked process while this one
    # draws the cases and the page.
    with ForkedCall(_draw_figures, out, y, s, threshold, both_classes, amaps if with_pixels else None,
                 gts if with_pixels else None, {k: _number(metrics.get(k)) for k in ("pixel_auroc", "aupro")},
                 loss_curves) as curves:
        case_groups, case_files = _draw_cases(out, names, defect_types, y, s, threshold, flagged, load_image,
                                              amaps, gts, pixel_threshold, vrange, n_cases, load_reconstructions)
        per_type = metrics.get("per_defect_type")
        if not isinstance(per_type, Mapping):
            per_type = per_defect_type_metrics(y, s, defect_types, flagged, gts if with_pixels else None,
                                               amaps if with_pixels else None)
        figures = curves.result()
    # The loss curves sit beside the per-type table (room to spare there), the other curves in one row.
    loss_figure = next((f for f in figures if f["file"] == "loss_curves.png"), None)
    figures = [f for f in figures if f is not loss_figure]
    norm = np.flatnonzero(y == 0)
    anom = np.flatnonzero(y == 1)
    page = render_page(
        "test_report.html",
        title=title,
        summary={
            "n": n, "n_normal": int(norm.size), "n_anomalous": int(anom.size),
            "rule": _rule_text(threshold, metrics),
            "missed": int(((y == 1) & ~flagged).sum()), "false_alarms": int(((y == 0) & flagged).sum()),
        },
        warnings=[str(w) for w in (metrics.get("warnings") or [])],
        metric_tables=_metric_tables(metrics, normalized is not None),
        confusion=_confusion(y, flagged),
        type_rows=_type_rows(y, s, flagged, defect_types, per_type),
        pixel_columns=with_pixels,
        figures=figures,
        loss_figure=loss_figure,
        figure_notes=_figure_notes(both_classes, amaps is not None, gts is not None, with_pixels),
        heatmap_note=_heatmap_note(vrange, pixel_threshold),
        mask_note=("Ground truth: green outline." if gts is not None else "No ground-truth masks were given."),
        case_groups=[
            {"heading": heading, "explanation": explanation, "empty": empty,
             "cases": [_case_entry(i, names, defect_types, y, s, flagged, case_files[i]) for i in idxs]}
            for heading, explanation, idxs, empty in case_groups
        ],
    )
    write_text_atomic(report_path, page)  # last: everything it links to exists now
    return report_path


def _draw_cases(
    out: Path, names: Sequence[str], defect_types: Sequence[str], y: np.ndarray, s: np.ndarray, threshold: float,
    flagged: np.ndarray, load_image: Callable[[int], np.ndarray], amaps: np.ndarray | None, gts: np.ndarray | None,
    pixel_threshold: float | None, vrange: tuple[float, float] | None, n_cases: int,
    load_reconstructions: Callable[[list[int]], Sequence[np.ndarray]] | None,
) -> tuple[list[tuple[str, str, list[int], str]], dict[int, tuple[str, str, tuple[int, int]]]]:
    """Choose the cases and draw them: ([(heading, explanation, image indices, text when empty)] per group,
    {image index: (figure, thumbnail, thumbnail size)})."""
    cases_dir = out / "cases"
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
    preview = int(pool[np.argmax(s[pool])])
    reconstructions: Sequence[np.ndarray | None] = [None] * len(shown_cases)
    if load_reconstructions is not None and shown_cases:
        reconstructions = list(load_reconstructions(shown_cases))
        if len(reconstructions) != len(shown_cases):
            raise ValueError(f"load_reconstructions returned {len(reconstructions)} images for {len(shown_cases)} indices")
    # Only the shown pictures are read. A case costs ~50 ms with Pillow, reading the image and writing the PNGs
    # included (a matplotlib figure cost ~0.3 s), so they are drawn here, no process pool needed.
    case_files = {
        i: _render_case(i, cases_dir, str(names[i]), str(defect_types[i]), int(y[i]), float(s[i]), threshold,
                        bool(flagged[i]), _checked_image(load_image, i, amaps, gts),
                        None if amaps is None else amaps[i], None if gts is None else gts[i], pixel_threshold,
                        vrange, reconstruction, i == preview)
        for i, reconstruction in zip(shown_cases, reconstructions)
    }
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
    return groups, case_files


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
    write_text_atomic(path, buf.getvalue())


def _draw_figures(out: Path, y: np.ndarray, s: np.ndarray, threshold: float, both_classes: bool,
                  maps: np.ndarray | None, masks: np.ndarray | None, pixel_metrics: Mapping[str, float | None],
                  loss_curves: Mapping[str, Sequence[float]] | None) -> list[dict[str, object]]:
    """Draw the report's curves at the size they are shown side by side; returns [{file, alt, width, height}]
    in page order. ``pixel_metrics``: the exact ``pixel_auroc`` and ``aupro`` for the legends (or None)."""
    # matplotlib and the curve math are imported here, in the process that draws: `anomalens test` never
    # loads them in its main process.
    from anomalens.report.breakdown import pixel_curves
    from anomalens.report.plots import (
        SMALL_FIGURE,
        plot_loss_curves,
        plot_pixel_roc,
        plot_precision_recall,
        plot_pro_curve,
        plot_roc,
        plot_score_histogram,
    )

    drawn: list[tuple[str, str]] = []
    histogram_size = (4.6, SMALL_FIGURE[1])
    plot_score_histogram(y, s, threshold, out / "score_histogram.png", figsize=histogram_size,
                         title="Image scores" + (": normal vs anomalous" if both_classes else ""))
    drawn.append(("score_histogram.png", "histogram of image scores, normal vs anomalous, with the threshold"))
    if both_classes:
        plot_roc(y, s, out / "roc.png", title="ROC (image level)", threshold=threshold, figsize=SMALL_FIGURE)
        plot_precision_recall(y, s, out / "precision_recall.png", threshold=threshold)
        drawn += [("roc.png", "ROC curve of image scores"), ("precision_recall.png", "precision-recall curve of image scores")]
    if maps is not None and masks is not None:
        curves = pixel_curves(masks, maps)
        if curves is not None:
            plot_pixel_roc(curves, out / "pixel_roc.png", auroc=pixel_metrics.get("pixel_auroc"))
            plot_pro_curve(curves, out / "pro_curve.png", aupro=pixel_metrics.get("aupro"))
            drawn += [("pixel_roc.png", "ROC curve of pixel scores"), ("pro_curve.png", "per-region-overlap curve")]
    if loss_curves:
        plot_loss_curves(loss_curves, out / "loss_curves.png", figsize=SMALL_FIGURE)
        drawn.append(("loss_curves.png", "loss curves per epoch"))
    figures = []
    for file, alt in drawn:
        width, height = _png_size(out / file)
        figures.append({"file": file, "alt": alt, "width": width, "height": height})
    return figures


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool) else None


def _rule_text(threshold: float, metrics: Mapping[str, object]) -> str:
    min_area = metrics.get("min_area")
    pixel = metrics.get("pixel_threshold")
    if isinstance(min_area, int) and isinstance(pixel, (int, float)):
        return f"a predicted defect region (map > {format_number(pixel)}) has at least {min_area} pixels"
    return f"its score > {format_number(float(threshold))}"


def _metric_tables(metrics: Mapping[str, object], with_normalized: bool) -> list[dict[str, object]]:
    """The metric tables in page order; the Counts card is inserted by the template after the second."""
    undefined = metrics.get("undefined") if isinstance(metrics.get("undefined"), Mapping) else {}
    tables = []
    known: set[str] = set(_SHOWN_ELSEWHERE)
    for heading, keys, note in (_RANKING, _DECISION, _RUN):
        rows = []
        for key, label in keys:
            known.add(key)
            if key in metrics and metrics[key] is not None:
                rows.append(_row(key, label, metrics[key], undefined))
        if heading == _DECISION[0] and with_normalized:
            note = _NORMALISED_NOTE
        if rows:
            tables.append({"heading": heading, "rows": rows, "note": note})
    other = []
    for key, value in metrics.items():
        if key in known or value is None:
            continue
        if isinstance(value, Mapping):  # e.g. {"logical_anomalies": 0.8, ...}: one row per scalar entry
            other += [_row(f"{key}.{sub}", f"{key} · {sub}", v, undefined) for sub, v in value.items()
                      if isinstance(v, (int, float, str, np.number))]
        elif isinstance(value, (int, float, str, np.number, list, tuple)):
            other.append(_row(key, key.replace("_", " "), value, undefined))
    if other:
        tables.append({"heading": "Other", "rows": other, "note": None})
    return tables


def _row(key: str, label: str, value: object, undefined: Mapping[str, object]) -> dict[str, str]:
    help_text = METRIC_HELP.get(key, "")
    if isinstance(value, float) and math.isnan(value):
        help_text = f"undefined: {undefined.get(key, 'not computable on this test set')}"
    return {"key": key, "label": label, "value": format_number(value), "help": help_text,
            "kind": "text" if isinstance(value, str) else "num"}


def _confusion(y: np.ndarray, flagged: np.ndarray) -> dict[str, int]:
    return {
        "tp": int((flagged & (y == 1)).sum()), "fp": int((flagged & (y == 0)).sum()),
        "tn": int((~flagged & (y == 0)).sum()), "fn": int((~flagged & (y == 1)).sum()),
    }


def _type_rows(y: np.ndarray, s: np.ndarray, flagged: np.ndarray, defect_types: Sequence[str],
               per_type: Mapping[str, Mapping[str, object]]) -> list[dict[str, object]]:
    """The per-defect-type table: the normal types first (the reference every defect type is ranked
    against), then each defect type with its per-type metrics."""
    types = np.asarray([str(t) for t in defect_types])
    rows = []
    for reference in (True, False):
        for name in dict.fromkeys(types[(y == 0) if reference else (y == 1)].tolist()):
            selected = (types == name) & ((y == 0) if reference else (y == 1))
            count = int(selected.sum())
            n_flagged = int(flagged[selected].sum())
            metrics = per_type.get(name, {}) if not reference else {}
            rows.append({
                "name": name, "reference": reference, "n": count, "flagged": n_flagged,
                "flagged_share": n_flagged / count, "median": float(np.median(s[selected])),
                "image_auroc": metrics.get("image_auroc"), "pixel_auroc": metrics.get("pixel_auroc"),
                "aupro": metrics.get("aupro"),
            })
    return rows


def _figure_notes(both_classes: bool, has_maps: bool, has_masks: bool, with_pixels: bool) -> list[str]:
    notes = []
    if not both_classes:
        notes.append("No ROC or precision-recall curve: they need both normal and anomalous images.")
    if not has_maps:
        notes.append("No pixel curves: this detector gives image-level scores only.")
    elif not has_masks:
        notes.append("No pixel curves: no ground-truth masks were given.")
    elif not with_pixels:
        notes.append("No pixel curves: the masks hold no defect pixel.")
    return notes


def _heatmap_note(vrange: tuple[float, float] | None, pixel_threshold: float | None) -> str:
    if vrange is None:
        return "No heatmaps: this detector gives image-level scores only."
    note = (f"All heatmaps share one fixed colour range [{format_number(vrange[0])}, {format_number(vrange[1])}]: "
            "blue = typical of normal images, red = most anomalous.")
    if pixel_threshold is not None:
        note += f" White outline: predicted defect (map > {format_number(pixel_threshold)})."
    return note


def _case_entry(i: int, names: Sequence[str], defect_types: Sequence[str], y: np.ndarray, s: np.ndarray,
                flagged: np.ndarray, files: tuple[str, str, tuple[int, int]]) -> dict[str, object]:
    verdict, wrong = _verdict(int(y[i]), bool(flagged[i]))
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
    verdict, wrong = _verdict(label, flagged)
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
