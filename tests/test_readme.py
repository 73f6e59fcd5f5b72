"""The README's examples work as written: the Python API example runs, the schema example is valid."""

from __future__ import annotations

import json
import re
from pathlib import Path

from absl import logging

from pipeline.data.schema import schema_from_dict

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


def test_the_schema_example_is_a_valid_schema():
    section = README.read_text().split("### Your own data", 1)[1]
    example = json.loads(re.search(r"```json\n(.*?)```", section, re.DOTALL).group(1))
    schema = schema_from_dict(example).validate()
    assert [task.type for task in schema.tasks] == ["binary", "regression", "multiclass"]
