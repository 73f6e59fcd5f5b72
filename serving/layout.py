"""TF Serving's on-disk and wire conventions, which exporters and servers must agree on.

A model's base path holds one folder per version, named by its integer version; a version's warmup
requests are `PredictionLog` records in `assets.extra/tf_serving_warmup_requests`; gRPC messages may be as
large as a signed 32-bit length allows.
"""

from __future__ import annotations

import os
from pathlib import Path

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1  # TF Serving accepts messages up to INT32_MAX; gRPC's default is 4 MiB


def versions(base_path: str | os.PathLike) -> list[int]:
    """The integer versions present under `base_path`, oldest first (none when it is not a directory)."""
    base = Path(base_path)
    if not base.is_dir():
        return []
    return sorted(int(p.name) for p in base.iterdir() if p.name.isdigit() and p.is_dir())
