"""Prometheus metrics under TF Serving's names, for `/monitoring/prometheus/metrics`.

A collector writes the exact names: `:tensorflow:serving:request_count`,
`:tensorflow:serving:request_latency`.
Requests naming a model the server does not serve all count under one `model_name`, `UNKNOWN_MODEL`: a
label per name a client makes up would let any client grow the metrics without bound.
`prometheus_client` renames every counter family to `<name>_total`, which TF Serving's are not, so the request
count is exposed untyped: its samples and its HELP/TYPE lines then all carry TF Serving's name.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import grpc
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import HistogramMetricFamily, Metric

from serving.errors import ServingError

# Microseconds, growing by 1.8x from 10 us: TF Serving's request-latency buckets.
LATENCY_BUCKETS_US = tuple(10 * 1.8**i for i in range(33))
UNKNOWN_MODEL = "__unknown__"


class ServingMetrics:
    """Request counts by model and status, and request latency by model, API and entry point.

    Args:
        model_names: the served models; any other name is counted as `UNKNOWN_MODEL`.
    """

    def __init__(self, model_names: Iterable[str]) -> None:
        self._model_names = frozenset(model_names)
        self._lock = threading.Lock()
        self._counts: dict[tuple[str, str], int] = defaultdict(int)
        self._latency: dict[tuple[str, str, str], list] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    def set_model_names(self, model_names: Iterable[str]) -> None:
        """The served models after a config reload; series of models no longer served stay."""
        self._model_names = frozenset(model_names) | {name for name, _ in self._counts}

    def record(self, model_name: str, api: str, entrypoint: str, status: str, seconds: float) -> None:
        micros = seconds * 1e6
        if model_name not in self._model_names:
            model_name = UNKNOWN_MODEL
        with self._lock:
            self._counts[(model_name, status)] += 1
            buckets = self._latency.setdefault(
                (model_name, api, entrypoint), [[0] * (len(LATENCY_BUCKETS_US) + 1), 0.0]
            )
            buckets[0][bisect.bisect_left(LATENCY_BUCKETS_US, micros)] += 1
            buckets[1] += micros

    @contextmanager
    def observe(self, model_name: str, api: str, entrypoint: str) -> Iterator[None]:
        """Times the block and counts it under the status it ends with."""
        started = time.perf_counter()
        status = "OK"
        try:
            yield
        except ServingError as error:
            status = error.code.name
            raise
        except Exception:
            status = grpc.StatusCode.INTERNAL.name
            raise
        finally:
            self.record(model_name, api, entrypoint, status, time.perf_counter() - started)

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            counts = dict(self._counts)
            latency = {key: (list(b), s) for key, (b, s) in self._latency.items()}
        requests = Metric(":tensorflow:serving:request_count", "The total number of requests.", "unknown")
        for (model_name, status), count in sorted(counts.items()):
            requests.add_sample(
                ":tensorflow:serving:request_count", {"model_name": model_name, "status": status}, count
            )
        yield requests
        histogram = HistogramMetricFamily(
            ":tensorflow:serving:request_latency",
            "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
            labels=["model_name", "API", "entrypoint"],
        )
        for (model_name, api, entrypoint), (buckets, total) in sorted(latency.items()):
            cumulative, running = [], 0
            for bound, count in zip((*LATENCY_BUCKETS_US, float("inf")), buckets, strict=True):
                running += count
                cumulative.append((str(bound) if bound != float("inf") else "+Inf", running))
            histogram.add_metric([model_name, api, entrypoint], cumulative, total)
        yield histogram

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
