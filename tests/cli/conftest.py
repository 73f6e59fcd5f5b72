"""A model trained once through the CLI, shared by the CLI tests."""

from pathlib import Path

import pytest

from tests.cli.commands import SMALL, mtl


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory) -> Path:
    """An OMoE trained for 40 steps from a flag file, as a named experiment would be."""
    root = tmp_path_factory.mktemp("cli")
    flagfile = root / "omoe_small.flags"
    flagfile.write_text("\n".join(["--model=omoe", "--max_steps=40", *SMALL]) + "\n")
    model_dir = root / "omoe"
    result = mtl("train", f"--flagfile={flagfile}", f"--model_dir={model_dir}")
    assert result.returncode == 0, result.stderr
    assert "step 40/40 (100%)" in result.stderr
    return model_dir
