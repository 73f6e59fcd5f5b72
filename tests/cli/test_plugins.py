"""Architectures from outside the package, through `mtl`: `--import`, and `mtl.architectures` entry points."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import threading
import urllib.request
from pathlib import Path

import numpy as np
import tensorflow as tf

from tests.cli.commands import SMALL, _env, assert_one_line_error

PLUGIN = textwrap.dedent(
    """
    from pipeline.layers import MLP
    from pipeline.models import register

    @register("wide_bottom")
    def wide_bottom(config):
        return MLP([64, 32], activation=config.activation, dropout=config.dropout, name="bottom")
    """
)


def _first_line(process: subprocess.Popen, seconds: float) -> str:
    """The first line `process` prints, or "" if none comes within `seconds`."""
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.append(process.stdout.readline()), daemon=True)
    reader.start()
    reader.join(seconds)
    return lines[0] if lines else ""


def _mtl(python_path: Path | None, *args: str) -> subprocess.CompletedProcess:
    env = _env()
    if python_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(python_path), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "mtl", *args], capture_output=True, text=True, timeout=300, env=env
    )


def test_an_imported_architecture_trains_evaluates_and_exports_and_serves_without_the_plugin(tmp_path):
    plugins = tmp_path / "plugins"
    (plugins / "my_package").mkdir(parents=True)
    (plugins / "my_package" / "__init__.py").write_text("")
    (plugins / "my_package" / "architectures.py").write_text(PLUGIN)
    (plugins / "my_package" / "more.py").write_text(PLUGIN.replace("wide_bottom", "other_bottom"))
    model_dir = tmp_path / "run"

    trained = _mtl(
        plugins,
        "train",
        "--import=my_package.architectures",
        "--import=my_package.more",
        "--model=wide_bottom",
        f"--model_dir={model_dir}",
        "--max_steps=20",
        *SMALL,
    )
    assert trained.returncode == 0, trained.stderr
    assert json.loads((model_dir / "config.json").read_text())["model"]["imports"] == [
        "my_package.architectures",
        "my_package.more",
    ]
    # Later stages import it from the saved config: no --import.
    evaluated = _mtl(plugins, "evaluate", f"--model_dir={model_dir}")
    assert evaluated.returncode == 0, evaluated.stderr
    assert "Evaluation of the eval split at step 20 on 512 examples:" in evaluated.stdout
    exported = _mtl(plugins, "export", f"--model_dir={model_dir}", f"--export_base={tmp_path / 'export'}")
    assert exported.returncode == 0, exported.stderr

    # `mtl serve` serves the export where the plugin is not installed, as the SavedModel computes it.
    (version,) = list((tmp_path / "export").iterdir())
    rows = np.random.default_rng(3).normal(size=(2, 100)).astype(np.float32)
    expected = tf.saved_model.load(str(version)).signatures["serving_default"](inputs=tf.constant(rows))
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "mtl", "serve", "--model_name=wide"]
            + [f"--model_base_path={tmp_path / 'export'}", "--port=0", "--rest_api_port=0"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=_env(),
        )
    try:
        match = re.search(r"REST (http://\S+), gRPC", _first_line(server, seconds=120))
        assert match, log.read_text()[-3000:]
        request = urllib.request.Request(
            f"{match.group(1)}/v1/models/wide:predict",
            data=json.dumps({"inputs": {"inputs": rows.tolist()}}).encode(),
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            outputs = json.loads(response.read())["outputs"]
    finally:
        server.terminate()
        server.communicate(timeout=60)
    assert sorted(outputs) == ["y1", "y2"]
    for task in ("y1", "y2"):
        np.testing.assert_allclose(outputs[task], expected[task].numpy(), rtol=1e-5)

    # Without the plugin on the path, a stage says which module it cannot import.
    missing = _mtl(None, "evaluate", f"--model_dir={model_dir}")
    assert_one_line_error(
        missing,
        "evaluate",
        "Cannot import the architecture module 'my_package.architectures': "
        "ModuleNotFoundError(\"No module named 'my_package'\")",
    )


def test_an_installed_packages_entry_point_registers_its_architecture(tmp_path):
    site = tmp_path / "site"
    (site / "acme_models").mkdir(parents=True)
    (site / "acme_models" / "__init__.py").write_text(PLUGIN)
    dist_info = site / "acme_models-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-models\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text("[mtl.architectures]\nacme = acme_models\n")
    trained = _mtl(
        site, "train", "--model=wide_bottom", f"--model_dir={tmp_path / 'run'}", "--max_steps=20", *SMALL
    )
    assert trained.returncode == 0, trained.stderr
    assert "Training wide_bottom from step 0 to 20" in trained.stderr
    shapes = [shape for _, shape in tf.train.list_variables(str(tmp_path / "run" / "ckpt-20"))]
    assert [100, 64] in shapes and [64, 32] in shapes  # the plugin's bottom: 100 inputs -> 64 -> 32
