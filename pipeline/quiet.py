"""Importing TensorFlow without its C++ start-up lines, which would open every `mtl` command (and any
program using the Python API that calls `import_tensorflow_quietly` before TensorFlow is imported).

`TF_CPP_MIN_LOG_LEVEL=2` leaves only TensorFlow's C++ warnings and errors, but TensorFlow 2.21 reads it in a
static initializer that runs after others have already logged (oneDNN, the CUDA runtime stub, CPU features),
and its profiler plugin links a second copy of the logging library that logs them again; the first look for
devices then logs an error on a machine without a GPU driver. So the import and that first look run with
file descriptor 2 pointed at a temporary file; afterwards everything caught is written back except those
known start-up lines. A failed import writes everything back. A user who sets `TF_CPP_MIN_LOG_LEVEL` to 0 or
1 asked for C++ logs and gets them all.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import tempfile

_START_UP_LINE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    rb"|[IW]\d{4} [\d:.]+ +\d+ (port|cudart_stub|cpu_feature_guard)\.cc:\d+\] .*"
    rb"|E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: .*"
    rb"|To enable the following instructions: .*)$"
)


def import_tensorflow_quietly() -> None:
    """Imports TensorFlow (and sets its log level) unless already imported; call before any other import
    of TensorFlow or Keras."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or os.environ["TF_CPP_MIN_LOG_LEVEL"] in ("0", "1"):
        importlib.import_module("tensorflow")
        return
    sys.stderr.flush()
    saved = os.dup(2)
    caught = tempfile.TemporaryFile()
    os.dup2(caught.fileno(), 2)
    failed = True
    try:
        importlib.import_module("tensorflow").config.list_physical_devices()
        failed = False
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        caught.seek(0)
        lines = caught.read().splitlines(keepends=True)
        caught.close()
        kept = lines if failed else [line for line in lines if not _START_UP_LINE.match(line.rstrip(b"\r\n"))]
        if kept:
            os.write(2, b"".join(kept))
