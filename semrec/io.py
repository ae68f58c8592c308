"""Atomic writes: every artifact is written to a temporary file beside it and renamed into place.

An interrupted command therefore never leaves a half-written file that a later stage trusts. This
module knows nothing of workspaces or models, so both can use it.

A full disk is reported here, in one place, whichever library was writing: safetensors and polars
raise their own error types, not `OSError`, so the error's text is read as well as its errno.
"""

import errno
import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path

from semrec.errors import SemrecError, StageFailed

TEMP_FILE = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")
"""The name `atomic_path` gives a temporary file: `.NAME.XXXXXXXX.tmp` (tempfile.mkstemp's random part)."""

_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_DISK_FULL_WORDS = ("No space left on device", "Disk quota exceeded", "StorageFull", "os error 28")
"""How safetensors (`IoError(Os { code: 28, kind: StorageFull, ... })`) and polars
(`ComputeError: parquet: ... No space left on device (os error 28)`) say it."""


def is_disk_full(error: BaseException) -> bool:
    """Whether `error`, of whatever library, means the disk (or the user's quota) is full."""
    if isinstance(error, OSError) and error.errno in _DISK_FULL_ERRNOS:
        return True
    return any(words in str(error) for words in _DISK_FULL_WORDS)


def _umask() -> int:
    """The process's umask, read from /proc where it can be, since setting it to read it is process-wide."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass  # no /proc: fall back to setting it and back
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_file_beside(path: Path) -> Path:
    """An empty temporary file next to `path`, with the mode a plain `open` would give (mkstemp's is 0600)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        if is_disk_full(e):
            raise _disk_full(path) from e
        raise SemrecError(f"cannot write {path}: {e.strerror}", "check that the folder exists and is writable") from e
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    except OSError:
        pass  # a file system without modes (FAT, some FUSE mounts): the file keeps the mode it has
    finally:
        os.close(fd)
    return Path(tmp)


def _disk_full(path: Path) -> StageFailed:
    return StageFailed(f"the disk is full while writing {path}", f"free some space and run the command again; {_kept(path)}")


def _kept(path: Path) -> str:
    what = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} was written"
    return f"{what} and the partial file was removed"


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside `path`; on success it is renamed over `path` in one step.

    Whatever goes wrong, the temporary file is removed and `path` keeps its previous content. A full
    disk becomes `StageFailed` (exit 1) naming the file; another `OSError` a `SemrecError`.
    """
    path = Path(path)
    tmp = _temp_file_beside(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except SemrecError:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise _disk_full(path) from e
        if isinstance(e, OSError):
            raise SemrecError(f"writing {path} failed: {e.strerror}", f"choose a writable folder; {_kept(path)}") from e
        raise
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temp_files(folder: Path, older_than: float) -> list[Path]:
    """Remove the temporary files of `atomic_path` in `folder` last changed before `older_than` (a time).

    An atomic write killed with -9 cannot clean up after itself; call this only while no other
    writer can be at work in `folder` (the workspace lock held), and it removes what such writes left.
    """
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if TEMP_FILE.match(entry.name) and entry.is_file() and entry.stat().st_mtime < older_than:
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


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


def cpu_copies(tensors: dict, prefix: str = "") -> dict:
    """Contiguous CPU copies of `tensors`, keys prefixed: what safetensors saves. Copies, because tied
    weights share storage, which safetensors refuses to save twice."""
    return {prefix + k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def write_weights(path: Path, state: dict, metadata: dict) -> None:
    """A model's tensors (copied to the CPU) and metadata (each value as JSON) in one safetensors file,
    written atomically: what `read_weights` gives back."""
    from safetensors.torch import save_file

    tensors = cpu_copies(state)
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})


def read_weights(path: Path, device: str = "cpu") -> tuple[dict, dict]:
    """The tensors (on `device`) and metadata of a `write_weights` file; OSError, or safetensors' own
    error, or ValueError for metadata that is not JSON, for the caller to explain."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device=str(device)) as f:
        raw = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return tensors, {k: json.loads(v) for k, v in raw.items()}
