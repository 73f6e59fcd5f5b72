"""Server options are checked when they are made, and `mtl serve` reports a bad one in one line."""

from __future__ import annotations

import pytest

from serving.config import single_model
from serving.errors import ServingConfigError
from serving.server import ModelServer, ServerOptions
from tests.cli.commands import assert_one_line_error, mtl


@pytest.mark.parametrize(
    "options, message",
    [
        ({"grpc_port": 99999}, "The gRPC port must be in 0-65535. Received: `99999`"),
        ({"rest_port": -1}, "The REST port must be in 0-65535. Received: `-1`"),
        (
            {"grpc_port": 9000, "rest_port": 9000},
            "The gRPC and REST ports must differ. Received: `9000` twice",
        ),
        ({"max_request_elements": 0}, "max_request_elements must be positive. Received: `0`"),
        ({"idle_timeout_seconds": -1.0}, "idle_timeout_seconds must be positive. Received: `-1.0`"),
    ],
)
def test_options_out_of_range_are_refused(options, message):
    with pytest.raises(ServingConfigError) as error:
        ServerOptions(**options)
    assert str(error.value) == message


def test_a_server_without_models_or_with_negative_retries_is_refused(tmp_path):
    with pytest.raises(ServingConfigError, match="No model to serve"):
        ModelServer([], ServerOptions(grpc_port=0, rest_port=0))
    with pytest.raises(ServingConfigError, match="max_num_load_retries must be 0 or more"):
        ModelServer(single_model("m", tmp_path), ServerOptions(max_num_load_retries=-1))


def test_mtl_serve_reports_a_port_out_of_range_and_a_missing_model_in_one_line(tmp_path):
    """`--port=99999` used to wrap silently to port 34463."""
    assert_one_line_error(
        mtl("serve", f"--model_base_path={tmp_path}", "--port=99999"),
        "serve",
        "The gRPC port must be in 0-65535. Received: `99999`",
    )
    assert_one_line_error(
        mtl("serve", "--port=0", "--rest_api_port=0"),
        "serve",
        "--model_base_path (with --model_name) or --model_config_file is required.",
    )
    assert_one_line_error(
        mtl("serve", f"--model_base_path={tmp_path}", "--max_num_load_retries=-1"),
        "serve",
        "max_num_load_retries must be 0 or more. Received: `-1`",
    )
