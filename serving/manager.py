"""Keeps the served versions of every model in line with what is on disk.

A poll lists the version folders under each base path, loads (and warms up) the versions the policy wants
before unloading the ones it no longer wants, then swaps the table requests read. A request that already
holds a servable finishes on it, so a new version appears with no failed request.

As in TF Serving, a version that fails to load is retried (`LoadRetries`) while the versions serving stay;
one that never loads is reported in its status. A folder that looks like a version but is not a plain one
(`0108`, `١٠٨`, beyond int64) is ignored with one warning; a base path with no version is warned about at
most once a minute; an export's temporary folder left behind by a killed export is removed once stale.
What the manager remembers is bounded by what is on disk, plus `MAX_ENDED_STATUSES` ended versions.
"""

from __future__ import annotations

import dataclasses
import shutil
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import tensorflow as tf
from absl import logging
from tensorflow_serving.apis import prediction_log_pb2

from serving.config import BatchingOptions, ModelSource
from serving.errors import MAX_MESSAGE_CHARS, ServingConfigError, invalid_argument, not_found, shown
from serving.layout import (
    EXPORT_TEMP_PREFIX,
    MAX_VERSION,
    STALE_EXPORT_SECONDS,
    WARMUP_FILE,
    folders,
    is_stale_export,
    looks_like_a_version,
)
from serving.servable import Servable

MAX_WARMUP_RECORDS = 1000
MAX_ENDED_STATUSES = 16  # per model: versions that were served (or failed) and are gone from disk
NO_VERSIONS_WARNING_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class LoadRetries:
    """TF Serving's `--max_num_load_retries` and `--load_retry_interval_micros`, with its defaults: a
    failed load is tried again this many times, this long apart (0: at once)."""

    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000

    def __post_init__(self) -> None:
        if self.max_num_load_retries < 0:
            raise ServingConfigError(
                f"max_num_load_retries must be 0 or more. Received: `{self.max_num_load_retries}`"
            )


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    """One row of GetModelStatus: a version's state and, for a failed load, why."""

    version: int
    state: str  # LOADING, AVAILABLE, UNLOADING or END, as TF Serving's ModelVersionStatus.State
    error_code: str = "OK"
    error_message: str = ""


@dataclasses.dataclass
class _Failure:
    """Failed loads of one version: how many so far, and when the next may start (None: given up)."""

    attempts: int
    retry_at: float | None


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
        retries: how failed loads are retried.
        stale_export_seconds: an export's temporary folder unchanged for this long is removed.
    """

    def __init__(
        self,
        sources: Iterable[ModelSource],
        warmup: bool = True,
        batching: BatchingOptions | None = None,
        retries: LoadRetries = LoadRetries(),
        stale_export_seconds: float = STALE_EXPORT_SECONDS,
    ) -> None:
        self._sources = {source.name: source for source in sources}
        if not self._sources:
            raise ServingConfigError("No model to serve: give a model base path or a model config file.")
        self._warmup = warmup
        self._batching = batching
        self._retries = retries
        self._stale_export_seconds = stale_export_seconds
        self._servables: dict[str, dict[int, Servable]] = {name: {} for name in self._sources}
        self._statuses: dict[str, dict[int, VersionStatus]] = {name: {} for name in self._sources}
        self._failures: dict[str, dict[int, _Failure]] = {name: {} for name in self._sources}
        self._warned_names: dict[str, set[str]] = {name: set() for name in self._sources}
        self._no_versions_warned_at: dict[str, float] = {}
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None

    @property
    def model_names(self) -> list[str]:
        return sorted(self._sources)

    # -- the base path ----------------------------------------------------------------------------

    def _on_disk(self, source: ModelSource) -> list[int] | None:
        """The versions under the source's base path, after warning once about each folder that looks
        like a version but is not one and removing stale temporary export folders; None when the base
        path cannot be read (missing, or out of file descriptors), which is no reason to unload anything."""
        base = source.base_path
        try:
            children = folders(base)
        except FileNotFoundError:
            self._warn_no_versions(source, f"Could not find base path {base} for servable {source.name}")
            return None
        except OSError as error:
            self._warn_no_versions(
                source, f"Could not list base path {base} for servable {source.name}: {error}"
            )
            return None
        warned = self._warned_names[source.name]
        found = []
        for child, version in children:
            if version is not None:
                found.append(version)
            elif child.name.startswith(EXPORT_TEMP_PREFIX):
                self._remove_if_stale(source, child)
            elif looks_like_a_version(child.name) and child.name not in warned:
                warned.add(child.name)
                logging.warning(
                    "Ignoring %s under the base path of %s: a version folder is named by its number in plain "
                    "ASCII digits, without leading zeros, at most %d.",
                    child,
                    source.name,
                    MAX_VERSION,
                )
        self._warned_names[source.name] = warned & {child.name for child, _ in children}
        if not found:
            self._warn_no_versions(
                source, f"No versions of servable {source.name} found under base path {base}"
            )
        return sorted(found)

    def _warn_no_versions(self, source: ModelSource, message: str) -> None:
        now = time.monotonic()
        if now - self._no_versions_warned_at.get(source.name, -NO_VERSIONS_WARNING_SECONDS) >= (
            NO_VERSIONS_WARNING_SECONDS
        ):
            self._no_versions_warned_at[source.name] = now
            logging.warning("%s (repeated at most every %.0f s)", message, NO_VERSIONS_WARNING_SECONDS)

    def _remove_if_stale(self, source: ModelSource, folder: Path) -> None:
        """Removes an export's temporary folder that has not changed for `stale_export_seconds`: the export
        that wrote it was killed (one still running would have renamed or removed it by then)."""
        try:
            if not is_stale_export(folder, self._stale_export_seconds):
                return
            shutil.rmtree(folder)
        except OSError as error:
            if folder.name not in self._warned_names[source.name]:
                self._warned_names[source.name].add(folder.name)
                logging.warning("Could not remove the stale partial export %s: %s", folder, error)
            return
        logging.info(
            "Removed %s, a partial export of %s left by an export that did not finish", folder, source.name
        )

    # -- loading ----------------------------------------------------------------------------------

    def _set_status(self, name: str, status: VersionStatus) -> None:
        statuses = dict(self._statuses[name])
        statuses[status.version] = status
        self._statuses[name] = statuses

    def _forget_gone(self, name: str, on_disk: list[int]) -> None:
        """Drops what is remembered of versions gone from disk, keeping the newest `MAX_ENDED_STATUSES`
        ended ones for GetModelStatus."""
        present = set(on_disk) | set(self._servables[name])
        self._failures[name] = {v: f for v, f in self._failures[name].items() if v in present}
        gone = sorted(v for v in self._statuses[name] if v not in present)
        if len(gone) > MAX_ENDED_STATUSES:
            dropped = set(gone[:-MAX_ENDED_STATUSES])
            self._statuses[name] = {v: s for v, s in self._statuses[name].items() if v not in dropped}

    def _due(self, name: str, version: int) -> bool:
        """Whether a load of the version may start now: never tried, or its retry is due."""
        failure = self._failures[name].get(version)
        return failure is None or (failure.retry_at is not None and time.monotonic() >= failure.retry_at)

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
            self._failed(source.name, version, error)
            return None
        self._failures[source.name].pop(version, None)
        logging.info(
            "Loaded %s version %d in %.2fs (%d warmup requests)",
            source.name,
            version,
            time.perf_counter() - started,
            replayed,
        )
        self._set_status(source.name, VersionStatus(version, "AVAILABLE"))
        return servable

    def _failed(self, name: str, version: int, error: Exception) -> None:
        """Schedules the next try of a failed load, or gives up after `max_num_load_retries` retries."""
        failure = self._failures[name].setdefault(version, _Failure(0, None))
        failure.attempts += 1
        if failure.attempts <= self._retries.max_num_load_retries:
            interval = max(self._retries.load_retry_interval_micros, 0) / 1e6
            failure.retry_at = time.monotonic() + interval
            logging.warning(
                "Failed to load %s version %d (attempt %d of %d), retrying in %g s: %s",
                name,
                version,
                failure.attempts,
                self._retries.max_num_load_retries + 1,
                interval,
                shown(str(error), 500),
            )
            return
        failure.retry_at = None
        logging.error("Failed to load %s version %d: %s", name, version, shown(str(error), 500))
        self._set_status(name, VersionStatus(version, "END", "UNKNOWN", str(error)[:MAX_MESSAGE_CHARS]))

    def refresh(self) -> None:
        """Loads the versions each policy wants, then unloads the rest (load before unload)."""
        with self._refresh_lock:
            self._refresh(self._sources)

    def reload_config(self, sources: Iterable[ModelSource]) -> list[str]:
        """Serves `sources` instead of the current models, as TF Serving's HandleReloadConfigRequest: the
        models listed load (a listed one already served follows its new policy and labels), then those no
        longer listed unload, so requests to the models that stay never fail. Returns the listed models that
        have no version available afterwards.

        Raises:
            ServingConfigError: for an empty list.
        """
        new = {source.name: source for source in sources}
        if not new:
            raise ServingConfigError("No model to serve: the new config lists no model.")
        with self._refresh_lock:
            for name in new:
                self._servables.setdefault(name, {})
                self._statuses.setdefault(name, {})
                self._failures[name] = {}  # a new config gets fresh load attempts, as TF Serving's
                self._warned_names.setdefault(name, set())
            self._sources = {**self._sources, **new}  # removed models serve on while the new ones load
            self._refresh(new)
            removed = [name for name in self._sources if name not in new]
            self._sources = dict(new)
            for name in removed:
                loaded = self._servables.pop(name)
                for version, servable in sorted(loaded.items()):
                    self._set_status(name, VersionStatus(version, "UNLOADING"))
                    servable.close()
                    self._set_status(name, VersionStatus(version, "END"))
                    logging.info("Unloaded %s version %d: no longer in the model config", name, version)
                self._failures.pop(name, None)
                self._warned_names.pop(name, None)
            return sorted(name for name in new if not self._servables[name])

    def _refresh(self, sources: dict[str, ModelSource]) -> None:
        for name, source in sources.items():
            on_disk = self._on_disk(source)
            if on_disk is None:
                continue
            given_up = {v for v, f in self._failures[name].items() if f.retry_at is None}
            wanted = source.wanted([v for v in on_disk if v not in given_up])
            loaded = dict(self._servables[name])
            for version in wanted:
                if version not in loaded and self._due(name, version):
                    servable = self._load(source, version)
                    if servable is not None:
                        loaded[version] = servable
                        self._servables[name] = dict(loaded)  # serve it as soon as it is ready
            # While a wanted version waits for a retry, the versions serving now stay.
            keep = set(wanted) | (set(on_disk) if set(wanted) - set(loaded) else set())
            for version in [v for v in loaded if v not in keep]:
                self._set_status(name, VersionStatus(version, "UNLOADING"))
                servable = loaded.pop(version)
                self._servables[name] = dict(loaded)
                servable.close()
                self._set_status(name, VersionStatus(version, "END"))
                logging.info("Unloaded %s version %d", name, version)
            self._forget_gone(name, on_disk)

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
            raise invalid_argument(f"Unrecognized servable version label: {shown(label)}")
        return labels[label]

    def servable(self, name: str, version: int | None = None, label: str | None = None) -> Servable:
        """The servable a predict or metadata request names (the newest available one by default)."""
        if name in self._sources and label:
            version = self._label_version(name, label)
        servables = self._servables.get(name, {})
        if version is None:
            if not servables:
                raise not_found(f"Servable not found for request: Latest({shown(name)})")
            return servables[max(servables)]
        if version not in servables:
            raise not_found(f"Servable not found for request: Specific({shown(name)}, {version})")
        return servables[version]

    def statuses(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> list[VersionStatus]:
        """GetModelStatus rows, newest version first."""
        statuses = self._statuses.get(name)
        if not statuses:
            raise not_found(f"Could not find any versions of model {shown(name)}")
        if label:
            version = self._label_version(name, label)
        if version is not None:
            if version not in statuses:
                raise not_found(f"Could not find version {version} of model {shown(name)}")
            return [statuses[version]]
        return [statuses[v] for v in sorted(statuses, reverse=True)]
