"""Keeps the served versions of every model in line with what is on disk.

A poll lists the integer-named versions under each base path, loads (and warms up) the versions the policy
wants before unloading the ones it no longer wants, then swaps the table requests read. A request that
already holds a servable finishes on it, so a new version appears with no failed request.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterable

import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import prediction_log_pb2

from serving.config import BatchingOptions, ModelSource
from serving.errors import invalid_argument, not_found
from serving.layout import WARMUP_FILE, versions
from serving.servable import Servable

MAX_WARMUP_RECORDS = 1000


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """One row of GetModelStatus: a version's state and, for a failed load, why."""

    version: int
    state: str  # LOADING, AVAILABLE, UNLOADING or END, as TF Serving's ModelVersionStatus.State
    error_code: str = "OK"
    error_message: str = ""


def _warm_up(servable: Servable) -> int:
    """Replays the version's warmup requests; a failing one fails the load, as in TF Serving."""
    path = servable.path / WARMUP_FILE
    if not path.exists():
        return 0
    count = 0
    for record in tf.data.TFRecordDataset(str(path)).take(MAX_WARMUP_RECORDS):
        log = prediction_log_pb2.PredictionLog.FromString(record.numpy())
        request = log.predict_log.request
        inputs = {alias: tf.make_ndarray(proto) for alias, proto in request.inputs.items()}
        servable.run(request.model_spec.signature_name, inputs, tuple(request.output_filter))
        count += 1
    return count


class ModelManager:
    """The table of servable versions, refreshed from disk.

    Args:
        sources: the models to serve.
        warmup: replay `assets.extra/tf_serving_warmup_requests` before a version becomes available.
        batching: batch concurrent requests to each version with these parameters (None: no batching).
    """

    def __init__(
        self, sources: Iterable[ModelSource], warmup: bool = True, batching: BatchingOptions | None = None
    ) -> None:
        self._sources = {source.name: source for source in sources}
        self._warmup = warmup
        self._batching = batching
        self._servables: dict[str, dict[int, Servable]] = {name: {} for name in self._sources}
        self._statuses: dict[str, dict[int, VersionStatus]] = {name: {} for name in self._sources}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def model_names(self) -> list[str]:
        return sorted(self._sources)

    # -- loading ----------------------------------------------------------------------------------

    def _set_status(self, name: str, status: VersionStatus) -> None:
        statuses = dict(self._statuses[name])
        statuses[status.version] = status
        self._statuses[name] = statuses

    def _load(self, source: ModelSource, version: int) -> Servable | None:
        self._set_status(source.name, VersionStatus(version, "LOADING"))
        started = time.perf_counter()
        servable = None
        try:
            servable = Servable(source.name, version, source.base_path / str(version), self._batching)
            replayed = _warm_up(servable) if self._warmup else 0
        except Exception as error:  # a broken export must not take the server down
            if servable is not None:
                servable.close()
            logging.error("Failed to load %s version %d: %s", source.name, version, error)
            self._set_status(source.name, VersionStatus(version, "END", "UNKNOWN", str(error)[:1024]))
            return None
        logging.info(
            "Loaded %s version %d in %.2fs (%d warmup requests)",
            source.name,
            version,
            time.perf_counter() - started,
            replayed,
        )
        self._set_status(source.name, VersionStatus(version, "AVAILABLE"))
        return servable

    def _loadable(self, name: str, on_disk: list[int]) -> list[int]:
        """The versions on disk that have not failed to load (a failed version is not retried)."""
        failed = {v for v, s in self._statuses[name].items() if s.state == "END" and s.error_message}
        return [v for v in on_disk if v not in failed]

    def refresh(self) -> None:
        """Loads the versions each policy wants, then unloads the rest (load before unload)."""
        with self._refresh_lock:
            for name, source in self._sources.items():
                on_disk = versions(source.base_path)
                loaded = dict(self._servables[name])
                for version in source.wanted(self._loadable(name, on_disk)):
                    if version not in loaded:
                        servable = self._load(source, version)
                        if servable is not None:
                            loaded[version] = servable
                            self._servables[name] = dict(loaded)  # serve it as soon as it is ready
                # Versions that failed to load do not count, so the versions serving now stay.
                wanted = source.wanted(self._loadable(name, on_disk))
                for version in [v for v in loaded if v not in wanted]:
                    self._set_status(name, VersionStatus(version, "UNLOADING"))
                    servable = loaded.pop(version)
                    self._servables[name] = dict(loaded)
                    servable.close()
                    self._set_status(name, VersionStatus(version, "END"))
                    logging.info("Unloaded %s version %d", name, version)

    def start_polling(self, interval_seconds: float) -> None:
        """Refreshes every `interval_seconds` in a background thread (0 or less: never)."""
        if interval_seconds <= 0:
            return

        def poll() -> None:
            while not self._stop.wait(interval_seconds):
                try:
                    self.refresh()
                except Exception:
                    logging.exception("Polling the model base paths failed")

        self._poller = threading.Thread(target=poll, name="version-poller", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        """Stops polling; the loaded versions keep serving."""
        self._stop.set()
        if self._poller is not None:
            self._poller.join()

    def close(self) -> None:
        """Stops polling and the loaded versions' batch threads (after their queued requests)."""
        self.stop()
        for by_version in self._servables.values():
            for servable in by_version.values():
                servable.close()

    # -- lookups ----------------------------------------------------------------------------------

    def _label_version(self, name: str, label: str) -> int:
        labels = dict(self._sources[name].labels)
        if label not in labels:
            raise invalid_argument(f"Unrecognized servable version label: {label}")
        return labels[label]

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a predict or metadata request names (the newest available one by default)."""
        if name in self._sources and label:
            version = self._label_version(name, label)
        servables = self._servables.get(name, {})
        if version is None:
            if not servables:
                raise not_found(f"Servable not found for request: Latest({name})")
            return servables[max(servables)]
        if version not in servables:
            raise not_found(f"Servable not found for request: Specific({name}, {version})")
        return servables[version]

    def statuses(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """GetModelStatus rows, newest version first."""
        statuses = self._statuses.get(name)
        if not statuses:
            raise not_found(f"Could not find any versions of model {name}")
        if label:
            version = self._label_version(name, label)
        if version is not None:
            if version not in statuses:
                raise not_found(f"Could not find version {version} of model {name}")
            return [statuses[version]]
        return [statuses[v] for v in sorted(statuses, reverse=True)]
