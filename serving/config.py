"""Which models to serve: TF Serving's `models.config` text proto, or one `--model_name/--model_base_path`.

Parsed with the protos `tensorflow-serving-api` ships, exactly as `tensorflow_model_server` reads them, so a
file the embedded server accepts is one the real server accepts.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from serving.config_protos import BatchingParameters, MonitoringConfig
from serving.errors import ServingConfigError

DEFAULT_METRICS_PATH = "/monitoring/prometheus/metrics"


@dataclasses.dataclass(frozen=True)
class ModelSource:
    """One served model: where its versions live and which of them to serve.

    `policy` is "latest" (the `num_versions` newest), "all", or "specific" (`versions`), as TF Serving's
    `model_version_policy`. `labels` maps version labels such as "stable" to versions.
    """

    name: str
    base_path: Path
    policy: str = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()
    labels: tuple[tuple[str, int], ...] = ()

    def wanted(self, on_disk: list[int]) -> list[int]:
        """The versions to serve, given the integer versions present under `base_path`."""
        if self.policy == "all":
            return sorted(on_disk)
        if self.policy == "specific":
            return sorted(v for v in on_disk if v in self.versions)
        return sorted(on_disk)[-self.num_versions :]


def _parse_text_proto(path: Path, message):
    try:
        return text_format.Parse(path.read_text(), message)
    except FileNotFoundError:
        raise ServingConfigError(f"{path} does not exist.") from None
    except text_format.ParseError as error:
        raise ServingConfigError(
            f"{path} is not a valid {message.DESCRIPTOR.name} text proto: {error}"
        ) from None


def read_model_config_file(path: str | Path) -> list[ModelSource]:
    """The models of a `models.config` file (a `ModelServerConfig` text proto); relative base paths are
    relative to the file's folder."""
    path = Path(path)
    config = _parse_text_proto(path, model_server_config_pb2.ModelServerConfig())
    return model_sources(config, str(path), path.parent)


def model_sources(
    config: model_server_config_pb2.ModelServerConfig, origin: str, relative_to: Path | None = None
) -> list[ModelSource]:
    """The models of a `ModelServerConfig` (from a file, or a ReloadConfigRequest).

    Raises:
        ServingConfigError: no model list, another platform, or a model without a name or configured twice,
            naming `origin`.
    """
    if not config.HasField("model_config_list"):
        raise ServingConfigError(f"{origin} has no model_config_list.")
    sources = []
    for model in config.model_config_list.config:
        if model.model_platform not in ("", "tensorflow"):
            raise ServingConfigError(f"{origin}: model {model.name!r} has platform {model.model_platform!r}.")
        base_path = Path(model.base_path)
        if not base_path.is_absolute() and relative_to is not None:
            base_path = relative_to / base_path
        policy = model.model_version_policy.WhichOneof("policy_choice") or "latest"
        sources.append(
            ModelSource(
                name=model.name,
                base_path=base_path,
                policy=policy,
                num_versions=model.model_version_policy.latest.num_versions or 1,
                versions=tuple(model.model_version_policy.specific.versions),
                labels=tuple(sorted(model.version_labels.items())),
            )
        )
    _check_sources(sources, origin)
    return sources


def single_model(name: str, base_path: str | Path) -> list[ModelSource]:
    sources = [ModelSource(name=name, base_path=Path(base_path))]
    _check_sources(sources, "--model_name/--model_base_path")
    return sources


def _check_sources(sources: list[ModelSource], origin: str) -> None:
    if not sources:
        raise ServingConfigError(f"{origin} names no model.")
    names = [s.name for s in sources]
    for source in sources:
        if not source.name:
            raise ServingConfigError(f"{origin}: a model has no name.")
        if names.count(source.name) > 1:
            raise ServingConfigError(f"{origin}: model {source.name!r} is configured twice.")
        if source.base_path.exists() and not source.base_path.is_dir():
            raise ServingConfigError(f"{origin}: base path {source.base_path} of {source.name!r} is a file.")


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """TF Serving's batching parameters (`--batching_parameters_file`), with its defaults."""

    max_batch_size: int = 32
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = 100
    num_batch_threads: int = 4
    allowed_batch_sizes: tuple[int, ...] = ()


def read_batching_parameters(path: str | Path) -> BatchingOptions:
    params = _parse_text_proto(Path(path), BatchingParameters())
    defaults = BatchingOptions()
    options = BatchingOptions(
        max_batch_size=params.max_batch_size.value or defaults.max_batch_size,
        batch_timeout_micros=params.batch_timeout_micros.value,
        max_enqueued_batches=params.max_enqueued_batches.value or defaults.max_enqueued_batches,
        num_batch_threads=params.num_batch_threads.value or defaults.num_batch_threads,
        allowed_batch_sizes=tuple(params.allowed_batch_sizes),
    )
    if options.allowed_batch_sizes and options.allowed_batch_sizes[-1] != options.max_batch_size:
        raise ServingConfigError(f"{path}: the last allowed_batch_sizes entry must equal max_batch_size.")
    return options


def read_monitoring_config(path: str | Path) -> str | None:
    """The Prometheus metrics path a `--monitoring_config_file` enables, or None if it enables none."""
    config = _parse_text_proto(Path(path), MonitoringConfig())
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_METRICS_PATH
