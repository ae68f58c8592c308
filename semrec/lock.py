"""One writing command at a time per workspace: an exclusive `flock` on a file in its folder.

The kernel releases a `flock` when its holder exits, however it exits, so a lock left by a command
killed with -9 is simply taken by the next one. The file also records who holds it (pid and
command line), for the message a second command gives; it is emptied on release and never removed,
because removing a lock file lets two processes lock two different files of the same name.
"""

import fcntl
import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

from semrec.errors import SemrecError

LOCK_FILE = ".semrec.lock"


def describe_holder(path: Path) -> str:
    """Who holds the lock at `path`, as its file records it: "pid 123 (semrec fit-retriever)"."""
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        holder = {}
    if not isinstance(holder, dict) or "pid" not in holder:
        return "another semrec command"
    return f"pid {holder['pid']} ({holder.get('command', 'semrec')})"


@contextmanager
def hold_lock(folder: Path, command: str, *, wait: bool = False, on_wait: Callable[[str], None] | None = None):
    """Hold the lock of `folder` while the block runs.

    If another process holds it: with `wait`, say so through `on_wait` and block until it is free;
    without, raise SemrecError (exit 2) naming the holder's pid and command.
    """
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise SemrecError(
            f"cannot lock the workspace {folder}: {e.strerror} ({path})", "run it in a folder you can write in"
        ) from e
    try:
        _acquire(fd, path, command, wait, on_wait)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "command": command}).encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)  # releases the lock


def _acquire(fd: int, path: Path, command: str, wait: bool, on_wait) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return
    except BlockingIOError:
        holder = describe_holder(path)
    if not wait:
        raise SemrecError(
            f"the workspace {path.parent} is in use by {holder}",
            f"wait for it to finish, or run `semrec --wait {command.removeprefix('semrec ')}` to start when it has",
        )
    if on_wait is not None:
        on_wait(f"the workspace is in use by {holder}; waiting for it to finish")
    fcntl.flock(fd, fcntl.LOCK_EX)
