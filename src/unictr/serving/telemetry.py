"""Prometheus metrics of the scoring service (every name starts with `unictr_`).

Each app gets its own `CollectorRegistry`, so several apps (tests) can live in one process.
Labels are bounded: `surface` is a registry surface (or "unknown"), `kind` a fixed error kind, `role`
live or shadow, `task` a task of the surface's loaded model.

Calibration on live traffic: `unictr_predicted_positives_total` (the sum of the live version's predicted
probabilities) and `unictr_predictions_total` (candidates scored) per surface × task are counters, so
`rate(a[w]) / rate(b[w])` is the exact mean prediction over any window `w`, summed across replicas and
unbroken by restarts or missed scrapes — what the labels joined later are compared with (the
numerator of the calibration ratio is expected positives). A gauge (an EWMA, or the windowed
`unictr_mean_prediction`) fixes its window at export time, weighs replicas equally when averaged and
cannot be summed with the clicks counted elsewhere.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from unictr.serving.scorer import ScoreResult

MEAN_WINDOW = 200  # requests in the window of unictr_mean_prediction


class ServingMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.latency = Histogram(
            "unictr_request_latency_seconds", "Score request latency (parse, encode, forward), by surface.",
            ["surface"], registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        self.candidates = Histogram(
            "unictr_request_candidates", "Candidates per score request.", ["surface"], registry=r,
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000),
        )
        self.unique_users = Histogram(
            "unictr_request_unique_users", "Unique users (with candidates) per score request.", ["surface"],
            registry=r, buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
        )
        self.chunks = Counter(
            "unictr_forward_chunks", "Model forward passes (chunks of at most max_unique_users users).", ["surface"],
            registry=r,
        )
        self.chunked = Counter(
            "unictr_chunked_requests", "Score requests split into more than one forward pass.", ["surface"], registry=r
        )
        self._input_metrics(r)
        self.errors = Counter(
            "unictr_errors",
            "Failed requests by kind: not_found, unavailable, busy, content_type, validation, too_large, disconnected, "
            "internal, shadow.",
            ["surface", "kind"], registry=r,
        )
        self.mean_prediction = Gauge(
            "unictr_mean_prediction", f"Mean predicted probability over the last {MEAN_WINDOW} requests.",
            ["surface", "task"], registry=r,
        )
        self.predicted_positives = Counter(
            "unictr_predicted_positives", "Sum of the live version's predicted probabilities (expected positives).",
            ["surface", "task"], registry=r,
        )
        self.predictions = Counter(
            "unictr_predictions", "Candidates scored by the live version, per task.", ["surface", "task"], registry=r,
        )
        self._model_metrics(r)
        self.shadow_diff = Histogram(
            "unictr_shadow_abs_diff", "Mean |shadow - live| probability per request.", ["surface", "task"],
            registry=r, buckets=(1e-5, 1e-4, 1e-3, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0),
        )
        self.shadow_skipped = Counter(
            "unictr_shadow_skipped", "Requests not shadow-scored because the shadow worker was busy.", ["surface"],
            registry=r,
        )
        self._window: dict[str, deque[tuple[np.ndarray, int]]] = {}
        self._lock = threading.Lock()

    def _input_metrics(self, r: CollectorRegistry) -> None:
        """The metrics of what requests brought that the model could not take as it came: sequences cut to
        max_len, events from the future, codes outside their modulo table."""
        self.truncated = Counter(
            "unictr_sequences_truncated", "User sequences longer than sequence.max_len (oldest events cut).",
            ["surface"], registry=r,
        )
        self.dropped_events = Counter(
            "unictr_sequence_events_dropped", "Sequence events at or after the request time (dropped).",
            ["surface"], registry=r,
        )
        self.folded_codes = Counter(
            "unictr_folded_codes",
            "Codes of an `encoding: modulo` feature outside [-1, hash_size): scored on another code's row.",
            ["surface", "feature"], registry=r,
        )

    def _model_metrics(self, r: CollectorRegistry) -> None:
        """The metrics of model loading: the versions served, switches, failed loads, served vs named."""
        self.model_info = Gauge(
            "unictr_model_info", "1 for each version served, by role (live, shadow); never one that failed to load.",
            ["surface", "role", "version"], registry=r,
        )
        self.reloads = Counter("unictr_model_reloads", "Model switches picked up from the registry.", ["surface"],
                               registry=r)
        self.load_failures = Counter(
            "unictr_model_load_failures", "Versions that failed to load, by role (the last good one keeps serving).",
            ["surface", "role"], registry=r,
        )
        self.ready = Gauge(
            "unictr_model_ready", "1 when the role serves the version the registry's pointer names, else 0.",
            ["surface", "role"], registry=r,
        )

    def observe_score(self, result: ScoreResult, seconds: float) -> None:
        s = result.surface
        self.latency.labels(s).observe(seconds)
        self.candidates.labels(s).observe(len(result.probabilities))
        self.unique_users.labels(s).observe(result.unique_users)
        self.chunks.labels(s).inc(result.chunks)
        if result.chunks > 1:
            self.chunked.labels(s).inc()
        self.truncated.labels(s).inc(result.truncated_sequences)
        self.dropped_events.labels(s).inc(result.dropped_events)
        for feature, count in result.folded_codes.items():
            self.folded_codes.labels(s, feature).inc(count)
        if len(result.probabilities):
            total = result.probabilities.sum(0, dtype=np.float64)
            with self._lock:
                window = self._window.setdefault(s, deque(maxlen=MEAN_WINDOW))
                window.append((total, len(result.probabilities)))
                mean = sum(w for w, _ in window) / sum(n for _, n in window)
            for task, m, p in zip(result.tasks, mean, total, strict=True):
                self.mean_prediction.labels(s, task).set(float(m))
                self.predicted_positives.labels(s, task).inc(float(p))
                self.predictions.labels(s, task).inc(len(result.probabilities))

    def observe_shadow(self, live: ScoreResult, shadow: ScoreResult) -> None:
        for j, task in enumerate(live.tasks):
            if task in shadow.tasks and len(live.probabilities):
                diff = np.abs(shadow.probabilities[:, shadow.tasks.index(task)] - live.probabilities[:, j]).mean()
                self.shadow_diff.labels(live.surface, task).observe(float(diff))

    def set_models(self, surface: str, roles: Mapping[str, tuple[str | None, bool]]) -> None:
        """Point unictr_model_info at the versions `surface` serves and set unictr_model_ready, from
        `roles`: role -> (version served or None, serves what the pointer names). Empty: forget `surface`."""
        for labels in [m.labels for m in self.model_info.collect()[0].samples if m.labels["surface"] == surface]:
            self.model_info.remove(labels["surface"], labels["role"], labels["version"])
        for labels in [m.labels for m in self.ready.collect()[0].samples if m.labels["surface"] == surface]:
            if labels["role"] not in roles:
                self.ready.remove(labels["surface"], labels["role"])
        for role, (version, ready) in roles.items():
            if version is not None:
                self.model_info.labels(surface, role, version).set(1)
            self.ready.labels(surface, role).set(int(ready))
