"""Warnings for the reader of a test report: what makes its numbers or its threshold less trustworthy.

``fit`` and ``calibrate`` log the weaknesses of the decision rule (the threshold rests on few normal
scores, on the training images themselves, or on a calibration without defects:
``anomalens.decision.weaknesses``, the one list), but those lines scroll away on the terminal of whoever
fitted the model. The operator reading the report weeks later needs them too, so the report shows the
same sentences, derived again from what the run saved (the decision rule's ``evidence``), and adds those
of the test itself (a false-alarm rate far above the one the threshold aimed at, no defect
flagged, too few test images for the rates to mean much, metrics undefined on this test set). Each
warning is one plain sentence; ``anomalens test`` puts them into metrics.json (``warnings``) and the
report shows them in a box at the top.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from scipy.stats import binomtest

from anomalens.decision import MIN_CALIBRATION_DEFECTS, MIN_THRESHOLD_SCORES, DecisionRule, weaknesses

__all__ = ["report_warnings", "FEW_TEST_IMAGES", "MIN_CALIBRATION_DEFECTS"]

#: Below this many images of a class, the report warns that its rate moves in coarse steps.
FEW_TEST_IMAGES = 10
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
                    min_threshold_scores: int = MIN_THRESHOLD_SCORES) -> list[str]:
    """The warnings for a test whose results are ``metrics`` (``anomalens.metrics.evaluate`` plus
    ``n_images`` / ``n_anomalous`` / ``undefined`` as ``anomalens test`` writes them), for a run whose
    decision rule is ``decision`` (None: only the test's own warnings). ``min_threshold_scores``: the
    number of normal scores below which a threshold is weak (``anomalens.decision.weaknesses``).
    """
    warnings: list[str] = []
    if decision is not None:
        warnings.extend(weaknesses(decision, min_threshold_scores))
    warnings.extend(_test_set_warnings(metrics, decision))
    return warnings


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
