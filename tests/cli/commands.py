"""Running `mtl` as a separate process, as a user does."""

import json
import os
import subprocess
import sys
from pathlib import Path

SMALL = [
    "--synthetic_examples=2048",
    "--synthetic_eval_examples=512",
    "--batch_size=64",
    "--num_experts=4",
    "--log_every_steps=20",
    "--save_checkpoints_steps=20",
]


def _env(tf_config: str = "") -> dict[str, str]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    if tf_config:
        env["TF_CONFIG"] = tf_config
    return env


def mtl(*args: str) -> subprocess.CompletedProcess:
    """Runs `mtl ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "mtl", *args], capture_output=True, text=True, timeout=300, env=_env()
    )


def mtl_on_csv(stage: str, model_dir, schema: dict, table, *flags: str) -> subprocess.CompletedProcess:
    """Runs `mtl STAGE` on a CSV table described by `schema` (written beside the table), with every fifth row
    for evaluation."""
    schema_path = Path(table).parent / "schema.json"
    schema_path.write_text(json.dumps(schema))
    return mtl(
        stage,
        f"--model_dir={model_dir}",
        "--data=csv",
        f"--schema={schema_path}",
        f"--train_files={table}",
        "--split=80/20/0",
        *flags,
    )


def mtl_process(*args: str, tf_config: str) -> subprocess.Popen:
    """Starts `mtl ARGS` as one task of a cluster described by `tf_config`."""
    return subprocess.Popen(
        [sys.executable, "-m", "mtl", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(tf_config),
    )


def assert_one_line_error(result: subprocess.CompletedProcess, stage: str, message: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == f"mtl {stage}: error: {message}", last_line
