"""Status and metadata answers as TF Serving's own protos, shared by the gRPC and REST frontends."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import json_format
from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, model_pb2, status_pb2

from serving.manager import VersionStatus
from serving.servable import Servable

SIGNATURE_DEF_FIELD = "signature_def"
_ERROR_CODES = status_pb2.StatusProto.DESCRIPTOR.fields_by_name["error_code"].enum_type


def status_response(statuses: Sequence[VersionStatus]) -> get_model_status_pb2.GetModelStatusResponse:
    response = get_model_status_pb2.GetModelStatusResponse()
    for status in statuses:
        response.model_version_status.add(
            version=status.version,
            state=get_model_status_pb2.ModelVersionStatus.State.Value(status.state),
            status=status_pb2.StatusProto(
                error_code=_ERROR_CODES.values_by_name[status.error_code].number,
                error_message=status.error_message,
            ),
        )
    return response


def metadata_response(servable: Servable) -> get_model_metadata_pb2.GetModelMetadataResponse:
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    for name, signature in servable.signature_defs.items():
        signature_map.signature_def[name].CopyFrom(signature)
    response = get_model_metadata_pb2.GetModelMetadataResponse(
        model_spec=model_pb2.ModelSpec(name=servable.name, signature_name="")
    )
    response.model_spec.version.value = servable.version
    response.metadata[SIGNATURE_DEF_FIELD].Pack(signature_map)
    return response


def to_json_dict(message) -> dict:
    """A proto as TF Serving's REST API prints it: snake_case names, defaults included."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def metadata_json(response: get_model_metadata_pb2.GetModelMetadataResponse) -> dict:
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    response.metadata[SIGNATURE_DEF_FIELD].Unpack(signature_map)
    return {
        "model_spec": to_json_dict(response.model_spec),
        "metadata": {SIGNATURE_DEF_FIELD: to_json_dict(signature_map)},
    }
