"""Atomic writes: every artifact is written to a temporary file beside it and renamed into place.

An interrupted command therefore never leaves a half-written file that a later stage trusts. This
module knows nothing of workspaces or models, so both can use it.
"""

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from semrec.errors import SemrecError


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success it is renamed over `path` in one step."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise SemrecError(f"cannot write {path}: {e.strerror}", "check that the folder exists and is writable") from e
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise SemrecError(
            f"writing {path} failed: {e.strerror}", "free some disk space or choose a writable folder; nothing was lost"
        ) from e
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def write_parquet(frame, path: Path) -> None:
    """Write a polars DataFrame atomically."""
    with atomic_path(path) as tmp:
        frame.write_parquet(tmp)
