"""`python -m pipeline STAGE ...` is the same as `mtl STAGE ...`."""

from pipeline.cli import run

run()
