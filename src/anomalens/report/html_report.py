"""The test report: scores.csv, plots, case figures and thumbnails, and report.html tying them together.

The page is built for the person who decides whether a model goes on the line, and fits on about two
1920 x 1080 screens: a one-line verdict, a box of warnings, the metrics in small tables by the question
they answer (how well does the score rank? what does the threshold do? how many of each? what ran?),
the metrics per defect type, the curves side by side, and the hardest cases as a grid of thumbnails
(each one opening its full figure). The HTML comes from a Jinja2 template with autoescaping
(:mod:`anomalens.report.templating`); this module only gathers the numbers and draws the pictures.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from anomalens.metrics import ImageCurves
from anomalens.outputs.folders import remove_earlier_files
from anomalens.report.breakdown import PRO_FPR_LIMIT, per_defect_type_metrics
from anomalens.report.cases import CaseChoice, case_entry, choose_cases, draw_cases, shown_pictures, write_scores_csv
from anomalens.report.figures import FIGURE_FILES, draw_figures
from anomalens.report.forked import ForkedCall
from anomalens.report.overlay import heatmap_range
from anomalens.report.templating import format_number, render_page, write_text_atomic

__all__ = ["write_test_report", "TestReport", "METRIC_HELP", "FIGURE_FILES", "ForkedCall"]

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
    image_curves: ImageCurves | None = None,
) -> Path:
    """Write a self-contained test report into ``out_dir`` and return the path of report.html.

    Files: ``scores.csv`` (name, defect_type, label, score, [normalized_score,] predicted, correct),
    ``score_histogram.png``; with both classes ``roc.png`` and ``precision_recall.png``; with maps and
    masks holding defect pixels ``pixel_roc.png`` and ``pro_curve.png``; ``loss_curves.png`` (when
    ``loss_curves`` is given); ``cases/*.png`` (a full figure and a ``*_thumb.png`` per case shown,
    and ``cases/preview.png``, the thumbnail of the highest-scoring anomalous image — of the
    highest-scoring image without anomalies — for index pages); and ``report.html``.

    ``predicted``: the detector's own decisions (1 = flagged) when they are not ``score > threshold``
    (the minimum-area rule); default ``scores > threshold``. ``image_curves``: the
    :func:`anomalens.metrics.image_curves` the image metrics were read from (drawn as they are).
    ``metrics`` is shown grouped in tables; keys the report does not know go into an "Other" table. Two
    structured keys are read from it when present: ``per_defect_type`` (as
    :func:`anomalens.report.breakdown.per_defect_type_metrics` returns; computed here when absent) and
    ``warnings`` (sentences shown in a box at the top;
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
    with TestReport(out_dir, names=names, defect_types=defect_types, labels=labels, scores=scores,
                    threshold=threshold, load_image=load_image, maps=maps, masks=masks,
                    pixel_threshold=pixel_threshold, loss_curves=loss_curves, n_cases=n_cases,
                    load_reconstructions=load_reconstructions, normalized_scores=normalized_scores,
                    predicted=predicted) as report:
        report.draw_cases()
        report.draw_curves(metrics, image_curves)
        return report.finish(metrics, title)


class TestReport:
    """:func:`write_test_report` in three steps, so a caller can compute the metrics while the pictures are
    drawn: :meth:`draw_cases` (scores.csv, then the case figures in a forked process: they need no metric),
    :meth:`draw_curves` (in another forked process: the legends need the pixel AUROC and AUPRO) and
    :meth:`finish` (the per-type table when the metrics lack it, the page, written last). Used as a context
    manager, which waits for the forked processes however the block ends."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        names: Sequence[str],
        defect_types: Sequence[str],
        labels: ArrayLike,
        scores: ArrayLike,
        threshold: float,
        load_image: Callable[[int], np.ndarray],
        maps: ArrayLike | None = None,
        masks: ArrayLike | None = None,
        pixel_threshold: float | None = None,
        loss_curves: Mapping[str, Sequence[float]] | None = None,
        n_cases: int = 6,
        load_reconstructions: Callable[[list[int]], Sequence[np.ndarray]] | None = None,
        normalized_scores: ArrayLike | None = None,
        predicted: ArrayLike | None = None,
    ) -> None:
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
        self.out = Path(out_dir)
        self.names, self.defect_types, self.y, self.s, self.flagged = names, defect_types, y, s, flagged
        self.threshold, self.pixel_threshold, self.amaps, self.gts = threshold, pixel_threshold, amaps, gts
        self.loss_curves, self.n_cases = loss_curves, n_cases
        self.load_image, self.load_reconstructions = load_image, load_reconstructions
        self.normalized = None if normalized_scores is None else np.asarray(normalized_scores, dtype=np.float64).ravel()
        self.both_classes = bool((y == 1).any() and (y == 0).any())
        self.with_pixels = amaps is not None and gts is not None and bool(gts.any())
        self.vrange = heatmap_range(amaps, y) if amaps is not None else None
        self._choice: CaseChoice | None = None
        self._cases: ForkedCall | None = None
        self._curves: ForkedCall | None = None

    def draw_cases(self) -> None:
        """Remove the earlier report's files, write scores.csv and start drawing the cases (forked)."""
        out = self.out
        out.mkdir(parents=True, exist_ok=True)
        # The old report goes *before* the files it links to.
        remove_earlier_files(out, ["report.html"])
        remove_earlier_files(out, FIGURE_FILES, {"cases": "*.png"})
        (out / "cases").mkdir(exist_ok=True)
        write_scores_csv(out / "scores.csv", self.names, self.defect_types, self.y, self.s, self.flagged,
                          self.normalized)
        self._choice = choose_cases(self.y, self.s, self.n_cases)
        # Only the shown images are read, here (a loader may decode with torch or run the model: not in a fork).
        images, reconstructions = shown_pictures(self._choice, self.load_image, self.amaps, self.gts,
                                                 self.load_reconstructions)
        self._cases = ForkedCall(draw_cases, out, self._choice, images, reconstructions, self.names,
                                 self.defect_types, self.y, self.s, self.threshold, self.flagged, self.amaps, self.gts,
                                 self.pixel_threshold, self.vrange)

    def draw_curves(self, metrics: Mapping[str, object], image_curves: ImageCurves | None = None) -> None:
        """Start drawing the curves (forked): ``metrics`` gives the legends' exact ``pixel_auroc`` and ``aupro``,
        ``image_curves`` the ROC and precision-recall curves the image metrics came from."""
        pixels = self.with_pixels
        self._curves = ForkedCall(draw_figures, self.out, self.y, self.s, self.threshold, self.both_classes,
                                  self.amaps if pixels else None, self.gts if pixels else None,
                                  {k: _number(metrics.get(k)) for k in ("pixel_auroc", "aupro")}, self.loss_curves,
                                  image_curves)

    def finish(self, metrics: Mapping[str, object], title: str = "anomalens test report") -> Path:
        """Wait for the pictures and write report.html (last: everything it links to exists then)."""
        if self._cases is None:
            self.draw_cases()
        if self._curves is None:
            self.draw_curves(metrics)
        y, s, flagged, defect_types = self.y, self.s, self.flagged, self.defect_types
        per_type = metrics.get("per_defect_type")
        if not isinstance(per_type, Mapping):
            pixels = self.with_pixels
            per_type = per_defect_type_metrics(y, s, defect_types, flagged, self.gts if pixels else None,
                                               self.amaps if pixels else None)
        case_files = self._cases.result()
        figures = self._curves.result()
        # The loss curves sit beside the per-type table (room to spare there), the other curves in one row.
        loss_figure = next((f for f in figures if f["file"] == "loss_curves.png"), None)
        figures = [f for f in figures if f is not loss_figure]
        n_anomalous = int((y == 1).sum())
        page = render_page(
            "test_report.html",
            title=title,
            summary={
                "n": int(y.size), "n_normal": int(y.size) - n_anomalous, "n_anomalous": n_anomalous,
                "rule": _rule_text(self.threshold, metrics),
                "missed": int(((y == 1) & ~flagged).sum()), "false_alarms": int(((y == 0) & flagged).sum()),
            },
            warnings=[str(w) for w in (metrics.get("warnings") or [])],
            metric_tables=_metric_tables(metrics, self.normalized is not None),
            confusion=_confusion(y, flagged),
            type_rows=_type_rows(y, s, flagged, defect_types, per_type),
            pixel_columns=self.with_pixels,
            figures=figures,
            loss_figure=loss_figure,
            figure_notes=_figure_notes(self.both_classes, self.amaps is not None, self.gts is not None,
                                       self.with_pixels),
            heatmap_note=_heatmap_note(self.vrange, self.pixel_threshold),
            mask_note=("Ground truth: green outline." if self.gts is not None else "No ground-truth masks were given."),
            case_groups=[
                {"heading": heading, "explanation": explanation, "empty": empty,
                 "cases": [case_entry(i, self.names, defect_types, y, s, flagged, case_files[i]) for i in idxs]}
                for heading, explanation, idxs, empty in self._choice.groups
            ],
        )
        report_path = self.out / "report.html"
        write_text_atomic(report_path, page)
        return report_path

    def close(self) -> None:
        """Wait for the forked processes still drawing."""
        for call in (self._cases, self._curves):
            if call is not None:
                call.close()

    def __enter__(self) -> "TestReport":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
