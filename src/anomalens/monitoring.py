"""What a running line tells its operators and Prometheus: counters of requests and verdicts, and drift.

``LineMetrics`` holds the service's / watcher's metrics in its own ``prometheus_client`` registry (two
services in one process never share counters) and renders them in the Prometheus text format for
``GET /metrics``:

- ``anomalens_requests_total{endpoint, status}`` and ``anomalens_request_seconds{endpoint}`` (histogram);
- ``anomalens_verdicts_total{verdict="ok"|"defect"}`` and ``anomalens_score`` (histogram of the
  normalised score, 0.5 = the threshold);
- ``anomalens_queue_depth``, ``anomalens_dropped_frames_total``, ``anomalens_sink_failures_total{sink}``;
- ``anomalens_model_info{model_id}`` (1 for the model in service);
- ``anomalens_drift_statistic``, ``anomalens_drift_p_value``, ``anomalens_drift_window``,
  ``anomalens_drift_detected`` (0 / 1), read from the attached ``DriftMonitor`` when rendered.

``DriftMonitor`` asks whether the line's images still look like the training images. The scores of the
last ``window`` images judged normal are compared with the fit's out-of-fold normal scores (the ones its
threshold came from) by the two-sample Kolmogorov–Smirnov test (``scipy.stats.ks_2samp``): drift when the
p-value falls below ``alpha``. Both samples are cut at the image threshold first — the live sample only
holds scores the rule passed, so the reference must be censored the same way or the test would compare
unlike things. Below ``min_count`` live scores the state is "warming-up"; without a reference (a run that
does not record its normal scores) it is "no-reference".
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Sequence
from typing import Any

from anomalens.errors import ConfigError

#: Drift test defaults: the last 200 normal-judged scores, a decision from 50 on, at the 1 % level.
DRIFT_WINDOW = 200
DRIFT_MIN_COUNT = 50
DRIFT_ALPHA = 0.01
#: Below this many reference scores there is nothing to compare with.
MIN_REFERENCE = 5

# Request latencies from a millisecond (a cached page) to a minute (a big batch on a CPU).
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Normalised scores: fine around the threshold (0.5), where verdicts change.
_SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)


class DriftMonitor:
    """The KS test of the live normal-judged scores against the fit's normal scores (module docstring).

    ``reference_scores``: the fit's out-of-fold normal image scores (raw scores, the model's units);
    ``threshold``: the image threshold, where both samples are cut (None: no cut); ``window``: how many of
    the latest normal-judged scores are tested; ``min_count``: below it the state is "warming-up";
    ``alpha``: the test's level. Thread-safe: ``observe`` may be called from scoring threads.
    """

    def __init__(self, reference_scores: Sequence[float] | None, *, threshold: float | None = None,
                 window: int = DRIFT_WINDOW, min_count: int = DRIFT_MIN_COUNT, alpha: float = DRIFT_ALPHA) -> None:
        if window < 2 or not 2 <= min_count <= window:
            raise ValueError(f"drift window {window} and min_count {min_count}: need 2 <= min_count <= window")
        if not 0 < alpha < 1:
            raise ValueError(f"drift alpha must be in (0, 1), got {alpha}")
        reference = [float(s) for s in (() if reference_scores is None else reference_scores)]
        if threshold is not None:
            reference = [s for s in reference if s <= threshold]
        self.reference = sorted(reference)
        self.threshold = threshold
        self.window = window
        self.min_count = min_count
        self.alpha = alpha
        self._live: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()
        self._cached: tuple[int, dict[str, Any]] | None = None
        self._seen = 0  # normal-judged scores observed so far (the cache key)

    def observe(self, score: float, anomalous: bool) -> None:
        """One verdict: its raw score joins the window when the image was judged normal."""
        if anomalous:
            return
        with self._lock:
            self._live.append(float(score))
            self._seen += 1

    def status(self) -> dict[str, Any]:
        """``{"state": "ok" | "drift" | "warming-up" | "no-reference", "statistic", "p_value", "window",
        "count", "min_count", "alpha", "reference_count", "test", "message"}`` (statistic / p-value None
        until tested)."""
        with self._lock:
            live, seen = list(self._live), self._seen
            if self._cached is not None and self._cached[0] == seen:
                return dict(self._cached[1])
        status: dict[str, Any] = {
            "state": "warming-up", "statistic": None, "p_value": None, "window": self.window, "count": len(live),
            "min_count": self.min_count, "alpha": self.alpha, "reference_count": len(self.reference),
            "test": "two-sample Kolmogorov-Smirnov, normal-judged scores vs the fit's normal scores",
        }
        if len(self.reference) < MIN_REFERENCE:
            status.update(state="no-reference", message="no drift test: the run does not record enough normal "
                                                        f"scores of its fit ({len(self.reference)})")
        elif len(live) < self.min_count:
            status["message"] = f"warming up: {len(live)} of {self.min_count} normal-judged images"
        else:
            from scipy.stats import ks_2samp

            result = ks_2samp(live, self.reference)
            drift = bool(result.pvalue < self.alpha)
            status.update(state="drift" if drift else "ok", statistic=float(result.statistic),
                          p_value=float(result.pvalue))
            status["message"] = (
                f"drift: the last {len(live)} normal-judged scores no longer look like the fit's normal scores "
                f"(KS {result.statistic:.3f}, p = {result.pvalue:.2g} < {self.alpha:g}); the line's images may "
                "have changed: check the camera, the lighting and the parts, or refit"
                if drift else f"no drift (KS {result.statistic:.3f}, p = {result.pvalue:.2g})")
        with self._lock:
            self._cached = (seen, status)
        return dict(status)


def reference_scores(decision: dict[str, Any] | None) -> list[float]:
    """The fit's normal scores recorded in a decision rule's evidence (``detector.json``'s ``decision`` or
    an export's), [] when it does not record them."""
    scores = ((decision or {}).get("evidence") or {}).get("normal_scores")
    if not isinstance(scores, list):
        return []
    return [float(s) for s in scores if isinstance(s, (int, float)) and not isinstance(s, bool)]


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ConfigError("metrics need prometheus-client: pip install 'anomalens[serve]' (or 'anomalens[line]')") from None
    return prometheus_client


class LineMetrics:
    """The metrics of one service or watcher, in a registry of their own (module docstring)."""

    def __init__(self, model_id: str | None = None) -> None:
        prometheus = _prometheus()
        Counter, Gauge, Histogram = prometheus.Counter, prometheus.Gauge, prometheus.Histogram
        self.registry = prometheus.CollectorRegistry()
        r = self.registry
        self._requests = Counter("anomalens_requests", "HTTP requests served", ["endpoint", "status"], registry=r)
        self._latency = Histogram("anomalens_request_seconds", "Time to answer a request", ["endpoint"],
                                  buckets=_LATENCY_BUCKETS, registry=r)
        self._verdicts = Counter("anomalens_verdicts", "Images judged, by verdict", ["verdict"], registry=r)
        self._scores = Histogram("anomalens_score", "Normalised anomaly score (0.5 = the threshold)",
                                 buckets=_SCORE_BUCKETS, registry=r)
        self._queue = Gauge("anomalens_queue_depth", "Images waiting to be scored", registry=r)
        self._dropped = Counter("anomalens_dropped_frames", "Frames dropped because scoring fell behind", registry=r)
        self._sink_failures = Counter("anomalens_sink_failures", "Results a sink failed to deliver", ["sink"],
                                      registry=r)
        self._model = Gauge("anomalens_model_info", "The model in service (1)", ["model_id"], registry=r)
        self._drift_statistic = Gauge("anomalens_drift_statistic", "KS statistic of live normal scores vs the fit's",
                                      registry=r)
        self._drift_p = Gauge("anomalens_drift_p_value", "KS test p-value (1 until tested)", registry=r)
        self._drift_window = Gauge("anomalens_drift_window", "Normal-judged scores in the drift window", registry=r)
        self._drift_detected = Gauge("anomalens_drift_detected", "1 when the drift test rejects", registry=r)
        self._drift_p.set(1.0)
        for verdict in ("ok", "defect"):
            self._verdicts.labels(verdict)  # both series exist from the start (a rate over 0 is 0, not absent)
        self._drift: DriftMonitor | None = None
        self._model_id: str | None = None
        self._lock = threading.Lock()
        if model_id is not None:
            self.set_model(model_id)

    def observe_request(self, endpoint: str, seconds: float, status: int) -> None:
        self._requests.labels(endpoint, str(status)).inc()
        self._latency.labels(endpoint).observe(seconds)

    def observe_verdict(self, anomalous: bool, score: float) -> None:
        """One verdict; ``score`` is the normalised score (0.5 = the threshold)."""
        self._verdicts.labels("defect" if anomalous else "ok").inc()
        self._scores.observe(score)

    def set_queue_depth(self, n: int) -> None:
        self._queue.set(n)

    def count_dropped_frames(self, n: int = 1) -> None:
        self._dropped.inc(n)

    def count_sink_failure(self, sink: str) -> None:
        self._sink_failures.labels(sink).inc()

    def set_model(self, model_id: str) -> None:
        with self._lock:
            if self._model_id is not None:
                self._model.remove(self._model_id)
            self._model_id = model_id
            self._model.labels(model_id).set(1)

    def watch_drift(self, monitor: DriftMonitor | None) -> None:
        """Export ``monitor``'s status (read at each ``render``) as the drift gauges."""
        self._drift = monitor

    def render(self) -> tuple[bytes, str]:
        """The exposition (body, content type) for ``GET /metrics``."""
        if self._drift is not None:
            status = self._drift.status()
            self._drift_statistic.set(status["statistic"] if status["statistic"] is not None else 0.0)
            self._drift_p.set(status["p_value"] if status["p_value"] is not None else 1.0)
            self._drift_window.set(status["count"])
            self._drift_detected.set(1.0 if status["state"] == "drift" else 0.0)
        prometheus = _prometheus()
        return prometheus.generate_latest(self.registry), prometheus.CONTENT_TYPE_LATEST
