"""Two `mtl train` processes on loopback, joined by TF_CONFIG into one MultiWorkerMirroredStrategy job."""

import json
import re
import socket

import pytest

from tests.cli.commands import SMALL, mtl_process


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_train_one_model(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    model_dir = tmp_path / "run"
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(
            mtl_process(
                "train", f"--model_dir={model_dir}", "--max_steps=60", *SMALL, tf_config=json.dumps(tf_config)
            )
        )
    logs = []
    for process in processes:
        _, stderr = process.communicate(timeout=240)
        assert process.returncode == 0, stderr
        logs.append(stderr)
    final = [re.search(r"step 60/60 \(100%\)  loss (\S+)", log).group(1) for log in logs]
    assert final[0] == final[1]  # one model: the all-reduced loss is the same on both workers
    # Only the chief (worker 0) writes into model_dir.
    assert sorted(p.name for p in model_dir.glob("ckpt-*.index")) == [
        "ckpt-20.index",
        "ckpt-40.index",
        "ckpt-60.index",
    ]
    assert (model_dir / "config.json").exists()
