"""ModelService.HandleReloadConfigRequest: the served set replaced while clients keep querying."""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from google.protobuf import text_format
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_management_pb2,
    model_service_pb2_grpc,
)

from serving.client import PredictionError, connect
from serving.config import ModelSource
from serving.server import ModelServer, ServerOptions

ROWS = np.random.default_rng(4).normal(size=(2, 100)).astype(np.float32)


def _reload_request(exports, *models: tuple[str, str]) -> model_management_pb2.ReloadConfigRequest:
    configs = "".join(
        f'config {{ name: "{name}" base_path: "{exports[folder]}" model_platform: "tensorflow" }}'
        for name, folder in models
    )
    return text_format.Parse(
        f"config {{ model_config_list {{ {configs} }} }}", model_management_pb2.ReloadConfigRequest()
    )


@pytest.fixture(scope="module")
def single_server(exports):
    sources = [ModelSource("single", exports["one_task"])]
    with ModelServer(sources, ServerOptions(grpc_port=0, rest_port=0, poll_seconds=0)) as server:
        yield server


def test_models_are_added_and_removed_while_the_others_keep_answering(single_server, exports):
    target = f"127.0.0.1:{single_server.grpc_port}"
    failures, answered, stop = [], [], threading.Event()

    def query() -> None:
        with connect(target, "single", retries=0) as client:
            while not stop.is_set():
                try:
                    answered.append(client.predict({"inputs": ROWS})["y1"].shape)
                except PredictionError as error:
                    failures.append(error)

    querying = threading.Thread(target=query)
    querying.start()
    try:
        with grpc.insecure_channel(target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            added = stub.HandleReloadConfigRequest(
                _reload_request(exports, ("single", "one_task"), ("mmoe", "two_tasks")), timeout=60
            )
            assert (added.status.error_code, added.status.error_message) == (0, "")
            with connect(target, "mmoe", retries=0) as client:
                assert sorted(client.predict({"inputs": ROWS})) == ["y1", "y2"]
            removed = stub.HandleReloadConfigRequest(
                _reload_request(exports, ("single", "one_task")), timeout=60
            )
            assert removed.status.error_code == 0
            with connect(target, "mmoe", retries=0) as client, pytest.raises(PredictionError) as error:
                client.predict({"inputs": ROWS})
            assert (error.value.code, error.value.message) == (
                "NOT_FOUND",
                "Servable not found for request: Latest(mmoe)",
            )
            status = stub.GetModelStatus(
                get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "mmoe"}), timeout=10
            )
            assert [s.state for s in status.model_version_status] == [
                get_model_status_pb2.ModelVersionStatus.END
            ]
    finally:
        stop.set()
        querying.join()
    assert not failures and len(answered) > 0
    assert single_server.manager.model_names == ["single"]


def test_unusable_configs_are_refused(single_server, exports):
    with grpc.insecure_channel(f"127.0.0.1:{single_server.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        for request, code, message in (
            (
                model_management_pb2.ReloadConfigRequest(),
                grpc.StatusCode.INVALID_ARGUMENT,
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported",
            ),
            (
                _reload_request(exports, ("single", "one_task"), ("single", "two_tasks")),
                grpc.StatusCode.INVALID_ARGUMENT,
                "The ReloadConfigRequest: model 'single' is configured twice.",
            ),
        ):
            with pytest.raises(grpc.RpcError) as error:
                stub.HandleReloadConfigRequest(request, timeout=30)
            assert (error.value.code(), error.value.details()) == (code, message)
    assert single_server.manager.model_names == ["single"]


def test_a_reload_applies_a_changed_version_policy(single_server, exports):
    """two_tasks holds versions 1 and 2: the default policy serves the latest, `all` both, `specific` one."""

    def reload(policy: str) -> dict[int, int]:
        request = _reload_request(exports, ("single", "one_task"), ("policy", "two_tasks"))
        text_format.Parse(policy, request.config.model_config_list.config[1].model_version_policy)
        assert stub.HandleReloadConfigRequest(request, timeout=60).status.error_code == 0
        status = stub.GetModelStatus(
            get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "policy"}), timeout=10
        )
        return {s.version: s.state for s in status.model_version_status}

    available, end = (
        get_model_status_pb2.ModelVersionStatus.AVAILABLE,
        get_model_status_pb2.ModelVersionStatus.END,
    )
    with grpc.insecure_channel(f"127.0.0.1:{single_server.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            assert reload("") == {2: available}
            assert reload("all {}") == {1: available, 2: available}
            assert reload("specific { versions: 1 }") == {1: available, 2: end}
            target = f"127.0.0.1:{single_server.grpc_port}"
            with connect(target, "policy", retries=0, version=1) as client:
                assert client.predict({"inputs": ROWS})["y1"].shape == (2,)
            with (
                connect(target, "policy", retries=0, version=2) as client,
                pytest.raises(PredictionError) as error,
            ):
                client.predict({"inputs": ROWS})
            assert error.value.code == "NOT_FOUND"
        finally:
            stub.HandleReloadConfigRequest(_reload_request(exports, ("single", "one_task")), timeout=60)
