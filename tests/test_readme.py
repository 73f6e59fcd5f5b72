"""The README's Python API example runs as written."""

from __future__ import annotations

import json
import re
from pathlib import Path

from absl import logging

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_api_example() -> str:
    section = README.read_text().split("### Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_the_python_api_example_trains_and_exports_the_best(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    verbosity = logging.get_verbosity()
    try:
        exec(compile(_python_api_example(), str(README), "exec"), namespace)
    finally:
        logging.set_verbosity(verbosity)
    printed = capsys.readouterr().out.splitlines()
    rmse, step = re.fullmatch(r"y1 RMSE (\S+) at step (\d+)", printed[0]).groups()
    assert float(rmse) < 0.6 and int(step) % 200 == 0
    history = json.loads((tmp_path / "runs/api/eval_history.json").read_text())
    best = json.loads((tmp_path / "runs/api/best/best.json").read_text())
    lowest = min(history, key=lambda results: results["tasks"]["y1"]["rmse"])
    assert best["metric"] == "y1/rmse" and best["global_step"] == lowest["global_step"]
    assert namespace["estimator"].step == best["global_step"]  # what was exported: the best checkpoint
    (version,) = list((tmp_path / "runs/api/export").iterdir())
    assert printed[1] == f"exported {Path('runs/api/export') / version.name}"
