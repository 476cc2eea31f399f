"""Warnings for the reader of a test report: what makes its numbers or its threshold less trustworthy.

``fit`` and ``calibrate`` log warnings about a weak decision rule (the threshold rests on few normal
scores, on the training images themselves, or on a calibration without defects), but those lines
scroll away on the terminal of whoever fitted the model. The operator reading the report weeks later
needs them too, so they are derived again from what the run saved (the decision rule's ``evidence``)
and from the test itself (a false-alarm rate far above the one the threshold aimed at, no defect
flagged, too few test images for the rates to mean much, metrics undefined on this test set). Each
warning is one plain sentence; ``anomalens test`` puts them into metrics.json (``warnings``) and the
report shows them in a box at the top.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from scipy.stats import binomtest

if TYPE_CHECKING:
    from anomalens.decision import DecisionRule

__all__ = ["report_warnings", "FEW_TEST_IMAGES", "MIN_CALIBRATION_DEFECTS"]

#: Below this many images of a class, the report warns that its rate moves in coarse steps.
FEW_TEST_IMAGES = 10
#: Below this many defective images, a labelled calibration is warned about.
MIN_CALIBRATION_DEFECTS = 10
# How unlikely the observed false alarms must be, if the threshold met its aim, before the report says so.
_FALSE_ALARM_SIGNIFICANCE = 0.01

# Readable names of the metrics that can be undefined, for the warning that lists them.
_METRIC_NAMES = {
    "image_auroc": "image AUROC", "image_aupr": "image AP", "image_f1_max": "best F1",
    "image_f1_max_threshold": "best-F1 threshold", "tpr": "TPR", "tnr": "TNR",
    "balanced_accuracy": "balanced accuracy", "precision": "precision", "f1": "F1",
    "pixel_auroc": "pixel AUROC", "aupro": "AUPRO",
}


def report_warnings(metrics: Mapping[str, Any], decision: DecisionRule | None = None,
                  min_threshold_scores: int = 30) -> list[str]:
    """The warnings for a test whose results are ``metrics`` (``anomalens.metrics.evaluate`` plus
    ``n_images`` / ``n_anomalous`` / ``undefined`` as ``anomalens test`` writes them), for a run whose
    decision rule is ``decision`` (None: only the test's own warnings). ``min_threshold_scores``: the
    number of normal scores below which ``fit`` calls its threshold weak (``Detector.min_threshold_scores``).
    """
    warnings: list[str] = []
    if decision is not None:
        warnings.extend(_decision_warnings(decision, min_threshold_scores))
    warnings.extend(_test_set_warnings(metrics, decision))
    return warnings


def _decision_warnings(decision: DecisionRule, min_threshold_scores: int) -> list[str]:
    evidence = decision.evidence or {}
    out: list[str] = []
    if decision.source == "quantile":
        rate = evidence.get("false_alarm_rate")
        n_normal = evidence.get("n_normal")
        aim = f"the false-alarm rate of {rate:g} aimed at" if isinstance(rate, (int, float)) else "its aim"
        if isinstance(n_normal, int) and n_normal < min_threshold_scores:
            out.append(f"The threshold rests on only {n_normal} normal score(s), fewer than {min_threshold_scores}: "
                       f"on new normal images the false-alarm rate may be far from {aim}. Fit on more normal "
                       "images, or calibrate on labelled images.")
        if evidence.get("folds") == 0:
            out.append("The threshold comes from the training images themselves (none could be held out), which "
                       f"the model fits better than new images: expect more false alarms than {aim}.")
        if (decision.score_reference is not None and decision.image_threshold == decision.score_reference
                and isinstance(n_normal, int) and n_normal > 1):
            out.append("The threshold equals the median normal score: the normal images it came from scored "
                       "(nearly) alike — identical copies? — so it cannot separate new normal images from defects "
                       "reliably.")
    elif decision.source in ("f1", "area"):
        n_defects = evidence.get("n_anomalous")
        if isinstance(n_defects, int) and n_defects < MIN_CALIBRATION_DEFECTS:
            out.append(f"The threshold was calibrated on only {n_defects} defective image(s): it may be tuned to "
                       "those few. Calibrate on more labelled defects, or keep the threshold from the normal "
                       "images (fit).")
    return out


def _test_set_warnings(metrics: Mapping[str, Any], decision: DecisionRule | None) -> list[str]:
    out: list[str] = []
    n_images = metrics.get("n_images")
    n_anomalous = metrics.get("n_anomalous")
    if isinstance(n_images, int) and isinstance(n_anomalous, int):
        n_normal = n_images - n_anomalous
        for count, what in ((n_anomalous, "defective"), (n_normal, "normal")):
            if 0 < count < FEW_TEST_IMAGES:
                out.append(f"Only {count} {what} test image(s): each one moves the {what}-image rates by "
                           f"{1 / count:.0%}, so read them as rough.")
    fp, tn = metrics.get("fp"), metrics.get("tn")
    rate = (decision.evidence or {}).get("false_alarm_rate") if decision is not None else None
    if (decision is not None and decision.source == "quantile" and isinstance(rate, (int, float)) and 0 < rate < 1
            and isinstance(fp, int) and isinstance(tn, int) and fp + tn > 0):
        test = binomtest(fp, fp + tn, rate, alternative="greater")
        if test.pvalue < _FALSE_ALARM_SIGNIFICANCE:
            out.append(f"{fp} of {fp + tn} normal test images are flagged ({fp / (fp + tn):.0%}), far more than the "
                       f"false-alarm rate of {rate:g} the threshold aimed at: the test images differ from the "
                       "training images (lighting, camera, product), or the threshold rests on too few images.")
    shared = metrics.get("calibration_images_in_test")
    if isinstance(shared, int) and shared > 0:
        out.append(f"{shared} of the {n_images} test images were used to calibrate this run's threshold: TPR, TNR "
                   "and balanced accuracy at the threshold are optimistic. Test on images the calibration did not "
                   "see.")
    tp = metrics.get("tp")
    if isinstance(tp, int) and tp == 0 and isinstance(n_anomalous, int) and n_anomalous > 0:
        out.append("No defective image is flagged at this threshold: the detector may rank defects well (see "
                   "AUROC) while the threshold sits above all of them. Calibrate on labelled images, or raise "
                   "false_alarm_rate.")
    undefined = metrics.get("undefined") or {}
    if undefined:
        reasons: dict[str, list[str]] = {}
        for key, why in undefined.items():
            reasons.setdefault(str(why), []).append(_METRIC_NAMES.get(key, key))
        for why, names in reasons.items():
            out.append(f"Undefined on this test set ({why}): {', '.join(names)}.")
    else:
        nan = [k for k, v in metrics.items() if isinstance(v, float) and math.isnan(v)]
        if nan:
            out.append(f"Undefined on this test set: {', '.join(_METRIC_NAMES.get(k, k) for k in nan)}.")
    return out
