"""Schemas of the two TF Serving config files whose protos `tensorflow-serving-api` does not ship.

`--batching_parameters_file` holds a `BatchingParameters` (servables/tensorflow/session_bundle_config.proto)
and `--monitoring_config_file` a `MonitoringConfig` (config/monitoring_config.proto). The messages are
declared here with TF Serving's field names, types and numbers, so `text_format` accepts and rejects
exactly what the server's parser does.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

_FIELD = descriptor_pb2.FieldDescriptorProto


def _message_classes() -> dict[str, type]:
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(wrappers_pb2.DESCRIPTOR.serialized_pb)
    proto = descriptor_pb2.FileDescriptorProto(
        name="mtl/tensorflow_serving_config_files.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        described = proto.message_type.add(name=name)
        for field_name, number, field_type, label, type_name in fields:
            field = described.field.add(name=field_name, number=number, type=field_type, label=label)
            if type_name:
                field.type_name = type_name

    optional, repeated = _FIELD.LABEL_OPTIONAL, _FIELD.LABEL_REPEATED
    int64_value = (_FIELD.TYPE_MESSAGE, optional, ".google.protobuf.Int64Value")
    message(
        "BatchingParameters",
        [
            ("max_batch_size", 1, *int64_value),
            ("batch_timeout_micros", 2, *int64_value),
            ("max_enqueued_batches", 3, *int64_value),
            ("num_batch_threads", 4, *int64_value),
            ("thread_pool_name", 5, _FIELD.TYPE_MESSAGE, optional, ".google.protobuf.StringValue"),
            ("allowed_batch_sizes", 6, _FIELD.TYPE_INT64, repeated, ""),
            ("pad_variable_length_inputs", 7, _FIELD.TYPE_BOOL, optional, ""),
            ("enable_large_batch_splitting", 9, _FIELD.TYPE_MESSAGE, optional, ".google.protobuf.BoolValue"),
        ],
    )
    message(
        "PrometheusConfig",
        [("enable", 1, _FIELD.TYPE_BOOL, optional, ""), ("path", 2, _FIELD.TYPE_STRING, optional, "")],
    )
    message(
        "MonitoringConfig",
        [
            (
                "prometheus_config",
                1,
                _FIELD.TYPE_MESSAGE,
                optional,
                ".tensorflow.serving.PrometheusConfig",
            )
        ],
    )
    pool.Add(proto)
    return {
        name: message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{name}"))
        for name in ("BatchingParameters", "MonitoringConfig")
    }


_CLASSES = _message_classes()
BatchingParameters = _CLASSES["BatchingParameters"]
MonitoringConfig = _CLASSES["MonitoringConfig"]
