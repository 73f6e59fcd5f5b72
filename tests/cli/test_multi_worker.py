"""Two `mtl train` processes on loopback, joined by TF_CONFIG into one MultiWorkerMirroredStrategy job."""

import json
import re
import signal
import socket
import time

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


@pytest.mark.slow
def test_a_signal_to_one_worker_stops_both_at_one_step_with_a_checkpoint(tmp_path):
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    model_dir = tmp_path / "run"
    processes = [
        mtl_process(
            "train",
            f"--model_dir={model_dir}",
            "--max_steps=10000000",
            *SMALL,
            "--save_checkpoints_steps=100000",
            tf_config=json.dumps(
                {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            ),
        )
        for index in range(2)
    ]
    deadline = time.monotonic() + 240
    while not (model_dir / "train").exists():  # the chief's first progress report
        assert time.monotonic() < deadline and all(p.poll() is None for p in processes)
        time.sleep(0.2)
    processes[1].send_signal(signal.SIGTERM)  # the worker that does not write model_dir
    stderr = [process.communicate(timeout=240)[1] for process in processes]
    assert [process.returncode for process in processes] == [143, 143], stderr
    steps = [
        re.search(rf"mtl: stopped by {reason} at step (\d+); saved a checkpoint", log).group(1)
        for reason, log in zip(("another worker's signal", "SIGTERM"), stderr, strict=True)
    ]
    assert steps[0] == steps[1]
    assert (model_dir / f"ckpt-{steps[0]}.index").exists()
