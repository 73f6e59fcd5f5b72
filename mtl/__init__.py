"""The `mtl` command line: flags (`flags.py`) and stages (`main.py`)."""

from mtl.main import main, run

__all__ = ["main", "run"]
