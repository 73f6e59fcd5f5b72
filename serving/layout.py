"""TF Serving's on-disk and wire conventions, which exporters and servers must agree on.

A model's base path holds one folder per version, named by its integer version in plain ASCII decimal
(`108`, not `0108` or `١٠٨`), at most the largest int64: the folder of version `v` is `<base>/<v>`,
whoever computes it. An exporter writes a version under a name starting with `EXPORT_TEMP_PREFIX` and
renames it into place once complete. A version's warmup requests are `PredictionLog` records in
`assets.extra/tf_serving_warmup_requests`; gRPC messages may be as large as a signed 32-bit length allows.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

WARMUP_FILE = Path("assets.extra") / "tf_serving_warmup_requests"
MAX_GRPC_MESSAGE_BYTES = 2**31 - 1  # TF Serving accepts messages up to INT32_MAX; gRPC's default is 4 MiB
EXPORT_TEMP_PREFIX = ".tmp-"
STALE_EXPORT_SECONDS = 600.0  # an export still writing touches its files more often than this
MAX_VERSION = 2**63 - 1
_VERSION_NAME = re.compile(r"0|[1-9][0-9]{0,18}", re.ASCII)


def version_number(name: str) -> int | None:
    """The version a folder name is, or None when it is not one."""
    if not _VERSION_NAME.fullmatch(name) or int(name) > MAX_VERSION:
        return None
    return int(name)


def looks_like_a_version(name: str) -> bool:
    """A name that holds a digit but is not a version (`0108`, `١٠٨`, `v2`, beyond int64): worth a warning,
    as someone probably meant it to be served; hidden names (an export in progress) are not."""
    return not name.startswith(".") and version_number(name) is None and any(c.isdigit() for c in name)


def versions(base_path: str | os.PathLike) -> list[int]:
    """The integer versions present under `base_path`, oldest first (none when it is not a directory)."""
    if not Path(base_path).is_dir():
        return []
    return sorted(version for _, version in folders(base_path) if version is not None)


def folders(base_path: str | os.PathLike) -> list[tuple[Path, int | None]]:
    """Each folder under `base_path` with the version it holds, None for a folder that is no version (an
    export's temporary folder, say). Raises OSError when `base_path` cannot be listed."""
    return [(child, version_number(child.name)) for child in Path(base_path).iterdir() if child.is_dir()]


def is_stale_export(folder: Path, max_age: float = STALE_EXPORT_SECONDS) -> bool:
    """Whether `folder`, an export's temporary folder, has not changed for `max_age` seconds: the export
    writing it was killed (one still running renames or removes it before that)."""
    newest = folder.stat().st_mtime
    for child in folder.rglob("*"):
        newest = max(newest, child.lstat().st_mtime)
    return time.time() - newest >= max_age
