"""`python -m mtl STAGE ...` is the same as `mtl STAGE ...`."""

from mtl import run

run()
