"""The packages import one way: `mtl` (the command line) on top of `pipeline` and `serving`, which stand side
by side; `pipeline/export.py` alone takes TF Serving's conventions from `serving`, and `serving` holds no
model code."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def imported_packages(package: str) -> dict[str, set[str]]:
    """The top-level packages each module of `package` imports, by module path."""
    imported = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        imported[str(path.relative_to(ROOT))] = names
    return imported


@pytest.mark.parametrize("forbidden", ["pipeline", "mtl", "keras"])
def test_serving_imports_no_model_code_and_not_the_cli(forbidden):
    offenders = [module for module, names in imported_packages("serving").items() if forbidden in names]
    assert offenders == []


def test_pipeline_does_not_import_the_cli_and_only_export_takes_from_serving():
    imported = imported_packages("pipeline")
    assert [module for module, names in imported.items() if "mtl" in names] == []
    assert [module for module, names in imported.items() if "serving" in names] == ["pipeline/export.py"]


def test_the_cli_is_the_composition_root():
    imported = set().union(*imported_packages("mtl").values())
    assert {"pipeline", "serving"} <= imported
