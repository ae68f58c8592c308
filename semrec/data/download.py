"""Getting raw files: from `data.local_dir`, from the per-machine cache, or over HTTP.

`fetch` streams a URL to `<dest>.part`, resumes a partial file with a Range request, retries
connection errors, timeouts and 5xx answers with exponential backoff, verifies a known checksum
and the integrity of gzip / zip archives, and only then renames the file into place. A file that
fails verification is moved aside to `<dest>.corrupt` and fetched once more; it is never parsed.

A file in `data.local_dir` is the user's own: it is checked (recorded digests, gzip / zip integrity,
and by each source, a last line cut short) but never deleted or fetched again; a message about a
damaged file says to replace it there, and to delete it only when it is a cached download.

`RawFiles` decides where a source's file comes from. The base of every download URL can be replaced
with the environment variable `SEMREC_MIRROR_URL` (the file is then fetched from
`$SEMREC_MIRROR_URL/<file name>`): for a local mirror, and for the tests.

`extract_members` unpacks named files from a zip or .tar.gz once, for the sources that scan them.
"""

import errno
import gzip
import hashlib
import io
import os
import re
import shutil
import tarfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import requests

from semrec.errors import SemrecError, StageFailed
from semrec.io import atomic_path
from semrec.report import Reporter

MIRROR_ENV = "SEMREC_MIRROR_URL"
CHUNK = 1 << 16  # bytes per read; a chunk in flight when a connection drops is fetched again
# Answers that no retry can fix: the file is not where we look, or we may not read it.
_MISSING = {401, 403, 404, 410}


@dataclass(frozen=True)
class RawFile:
    """One upstream file: its name in the cache and in `data.local_dir`, and where it is published."""

    name: str
    url: str | None
    sha256: str | None = None
    md5: str | None = None
    md5_url: str | None = None  # where upstream publishes the md5, when it is not recorded here

    def local_names(self) -> tuple[str, ...]:
        """Names accepted in `data.local_dir`: the file itself, or gzipped unless it already is."""
        return (self.name,) if self.name.endswith(".gz") else (self.name, self.name + ".gz")


def download_url(raw: RawFile) -> str | None:
    mirror = os.environ.get(MIRROR_ENV)
    if mirror and raw.url:
        return f"{mirror.rstrip('/')}/{raw.name}"
    return raw.url


def dataset_cache(dataset: str) -> Path:
    from semrec.artifacts import cache_dir

    return cache_dir() / dataset


def find_local(raw: RawFile, local_dir: Path) -> Path | None:
    for name in raw.local_names():
        if (local_dir / name).is_file():
            return local_dir / name
    return None


@dataclass
class RawFiles:
    """Where one dataset's raw files come from: `data.local_dir` if set (no network), else the cache,
    else a download into the cache (unless offline)."""

    dataset: str
    local_dir: Path | None = None
    offline: bool = False
    reporter: Reporter = field(default_factory=Reporter)

    @classmethod
    def from_settings(cls, data, dataset: str, *, root: Path, reporter: Reporter) -> "RawFiles":
        """`data.local_dir` (relative to the project folder `root`) and `data.offline` for one dataset."""
        local_dir = None
        if data.local_dir:
            local_dir = Path(data.local_dir).expanduser()
            local_dir = local_dir if local_dir.is_absolute() else root / local_dir
            if not local_dir.is_dir():
                raise SemrecError(
                    f"data.local_dir = {data.local_dir!r} is not a folder ({local_dir})",
                    "set it to the folder that holds the raw files, or to '' to download them",
                )
        return cls(dataset, local_dir, data.offline, reporter)

    @property
    def cache(self) -> Path:
        return dataset_cache(self.dataset)

    def get(self, raw: RawFile, *, required: bool = True) -> Path | None:
        """The path of `raw`. With `required=False`, a file not at hand that cannot be downloaded gives None."""
        if self.local_dir is not None:
            path = find_local(raw, self.local_dir)
            if path is None:
                if not required:
                    return None
                raise SemrecError(f"{raw.name} is not in data.local_dir ({self.local_dir})", self.placement_hint(raw))
            _check_local(path)
            _check_recorded_digest(raw, path)
            return path
        dest = self.cache / raw.name
        if dest.is_file():
            _check_local(dest)
            return dest
        url = download_url(raw)
        if url is None:
            if not required:
                return None
            raise SemrecError(f"{raw.name} has no download location", self.placement_hint(raw))
        if self.offline:
            raise SemrecError(f"offline, and {raw.name} is not in the cache", self.placement_hint(raw))
        md5 = raw.md5 or self._published_md5(raw)
        return fetch(url, dest, sha256=raw.sha256, md5=md5, reporter=self.reporter, hint=self.placement_hint(raw))

    def _published_md5(self, raw: RawFile) -> str | None:
        """The md5 upstream publishes beside the file, or None (with a warning) when it cannot be read."""
        if not raw.md5_url:
            return None
        mirror = os.environ.get(MIRROR_ENV)
        url = f"{mirror.rstrip('/')}/{raw.name}.md5" if mirror else raw.md5_url
        try:
            response = requests.get(url, timeout=30)
            found = re.search(r"\b[0-9a-fA-F]{32}\b", response.text) if response.ok else None
        except requests.RequestException:
            found = None
        if found is None:
            self.reporter.warn(f"no checksum could be read from {url}; {raw.name} is checked for integrity only")
            return None
        return found.group(0).lower()

    def placement_hint(self, raw: RawFile) -> str:
        if self.local_dir is not None:
            where = f"put it into {self.local_dir}"
        else:
            where = f"put it into {self.cache} (or into a folder named by data.local_dir)"
        return f"{_how_to_get(raw)} and {where}"


def _how_to_get(raw: RawFile) -> str:
    """Where to fetch `raw` by hand, and the name to save it under when upstream publishes it under another."""
    if not raw.url:
        return f"get {raw.name} (see the dataset's documentation)"
    published_as = raw.url.rsplit("/", 1)[-1]
    rename = f", save it as {raw.name} (the name semrec looks for, not {published_as})" if published_as != raw.name else ""
    return f"fetch {raw.url} by hand{rename}"


def replace_hint(path: Path) -> str:
    """How to get a good copy of a damaged raw file: a cached download is fetched again once deleted; any
    other file (one of data.local_dir) is the user's own, which semrec neither deletes nor fetches again."""
    from semrec.artifacts import cache_dir

    if path.resolve().is_relative_to(cache_dir().resolve()):
        return f"delete {path} to fetch it again"
    return f"{path} is your own copy (data.local_dir): replace it with a complete copy of the file, or fix it"


def _check_recorded_digest(raw: RawFile, path: Path) -> None:
    """A file of data.local_dir against the digest recorded for it (of its content, when it is a gzipped copy)."""
    problem = checksum_problem(path, sha256=raw.sha256, md5=raw.md5, gunzip=path.name != raw.name)
    if problem:
        raise SemrecError(
            f"{path} is not the file semrec expects as {raw.name}: its {problem}; it may be truncated or another release",
            f"{_how_to_get(raw)} and put it into {path.parent} in place of {path.name}",
        )


def _check_local(path: Path) -> None:
    problem = integrity_problem(path)
    if problem:
        raise SemrecError(f"{path} is damaged: {problem}", replace_hint(path))


# -- fetching ---------------------------------------------------------------------------------


class _Retryable(Exception):
    """A failure that a later attempt may not meet: cut connection, timeout, 5xx."""


def fetch(
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    md5: str | None = None,
    reporter: Reporter | None = None,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 60.0,
    hint: str | None = None,
) -> Path:
    """Download `url` to `dest` (resuming `dest.part`), verify it, and rename it into place.

    Raises SemrecError for 401/403/404/410 (no retry) and StageFailed when retries run out or the
    file is still corrupt after one fresh download. A full disk keeps the partial file for resume.
    """
    reporter = reporter or Reporter()
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SemrecError(f"cannot create the cache folder {dest.parent}: {e.strerror}", "set SEMREC_CACHE_DIR to a writable folder") from e
    hint = hint or f"fetch {url} by hand and put it at {dest}"
    for attempt in range(2):
        _download(url, part, reporter, retries=retries, backoff=backoff, timeout=timeout, hint=hint)
        problem = checksum_problem(part, sha256=sha256, md5=md5) or integrity_problem(part, name=dest.name)
        if problem is None:
            os.replace(part, dest)
            return dest
        corrupt = dest.with_name(dest.name + ".corrupt")
        os.replace(part, corrupt)
        if attempt == 0:
            reporter.warn(f"{dest.name} from {url} is bad ({problem}); set aside as {corrupt.name}, fetching it again")
    raise StageFailed(f"{dest.name} from {url} is bad twice in a row: {problem} (kept as {corrupt})", hint)


def _download(url: str, part: Path, reporter: Reporter, *, retries: int, backoff: float, timeout: float, hint: str) -> None:
    failures = 0
    while True:
        try:
            _download_once(url, part, reporter, timeout=timeout, hint=hint)
            return
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, _Retryable) as e:
            failures += 1
            if failures > retries:
                kept = f"; the partial file {part} is kept and the next run resumes it" if part.exists() else ""
                raise StageFailed(f"downloading {url} failed {failures} times, last: {e}{kept}", hint) from e
            delay = backoff * 2 ** (failures - 1)
            reporter.warn(f"{url}: {e}; retrying in {delay:g} s ({failures}/{retries})")
            time.sleep(delay)


def _download_once(url: str, part: Path, reporter: Reporter, *, timeout: float, hint: str) -> None:
    offset = part.stat().st_size if part.exists() else 0
    # identity: a server that gzips on the fly would otherwise hand us decoded bytes of a .gz file
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with requests.get(url, headers=headers, stream=True, timeout=timeout) as response:
        status = response.status_code
        if status in _MISSING:
            raise SemrecError(f"{url} answered HTTP {status}: {part.name.removesuffix('.part')} cannot be downloaded", hint)
        if status == 416 and offset:
            part.unlink()  # our partial file is not a prefix of what the server has: start over
            raise _Retryable("the server refused to resume (HTTP 416); starting over")
        if status >= 500 or status == 429:
            raise _Retryable(f"HTTP {status}")
        if status >= 400:
            raise SemrecError(f"{url} answered HTTP {status}", hint)
        if status == 206 and not response.headers.get("Content-Range", "").startswith(f"bytes {offset}-"):
            part.unlink()
            raise _Retryable(f"the server resumed at the wrong place ({response.headers.get('Content-Range')}); starting over")
        if status != 206:
            offset = 0  # the server ignored Range and sends the whole file
        length = response.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        written = offset
        try:
            with open(part, "ab" if offset else "wb") as out, reporter.progress(
                f"downloading {part.name.removesuffix('.part')}", total=total
            ) as bar:
                bar.advance(offset)
                for chunk in response.iter_content(CHUNK):
                    out.write(chunk)
                    written += len(chunk)
                    bar.advance(len(chunk))
        except requests.RequestException:
            raise  # a network failure (these are OSErrors too): retried by the caller
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise SemrecError(
                    f"the disk is full while writing {part}",
                    "free some space and run the command again: the partial download is kept and resumes",
                    exit_code=1,
                ) from e
            raise SemrecError(f"cannot write {part}: {e.strerror}", "set SEMREC_CACHE_DIR to a writable folder") from e
        if total is not None and written != total:
            raise _Retryable(f"connection closed after {written} of {total} bytes")


# -- verification -----------------------------------------------------------------------------


def file_digest(path: Path, algorithm: str, *, gunzip: bool = False) -> str:
    """The hex digest of the file's bytes, or with `gunzip` of the bytes it decompresses to."""
    h = hashlib.new(algorithm)
    with gzip.open(path, "rb") if gunzip else open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def checksum_problem(
    path: Path, *, sha256: str | None = None, md5: str | None = None, gunzip: bool = False
) -> str | None:
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            actual = file_digest(path, algorithm, gunzip=gunzip)
            if actual != expected.lower():
                return f"{algorithm} is {actual}, expected {expected}"
    return None


def compression(path: Path, name: str | None = None) -> str | None:
    """The file's packing, "zip", "gzip" (a .tar.gz too) or None, from its name (`name`, else the path's) or first bytes."""
    name = name or path.name
    with open(path, "rb") as f:
        magic = f.read(4)
    if name.endswith(".zip") or magic == b"PK\x03\x04":
        return "zip"
    if name.endswith((".gz", ".tgz")) or magic[:2] == b"\x1f\x8b":
        return "gzip"
    return None


def integrity_problem(path: Path, name: str | None = None) -> str | None:
    """Why a gzip / zip file is damaged (read to the end, CRCs checked), or None. Other files pass."""
    kind = compression(path, name)
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            return f"not a complete zip archive ({e})"
        return f"member {bad} fails its CRC check" if bad else None
    if kind == "gzip":
        try:
            with gzip.open(path, "rb") as f:
                while f.read(CHUNK):
                    pass
        except (OSError, EOFError, zlib.error) as e:
            return f"not a complete gzip file ({e})"
    return None


def last_line_if_cut(path: Path) -> str | None:
    """The last line of a plain file that does not end with a newline, as a file cut mid-line does; else None.

    A gzipped file gives None: `integrity_problem` finds a cut gzip stream."""
    with open(path, "rb") as f:
        if f.read(2) == b"\x1f\x8b":
            return None
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - CHUNK))
        tail = f.read()
    if not tail or tail.endswith((b"\n", b"\r")):
        return None
    return tail.rsplit(b"\n", 1)[-1].decode("utf-8", errors="replace")


def looks_truncated(path: Path, last_line: str, why: str, hint: str | None = None) -> SemrecError:
    """The error for a file whose last line is cut: it names the file and the line; the hint defaults to `replace_hint`."""
    return SemrecError(
        f"{path.name} looks truncated: its last line ends without a newline and {why} (got {last_line[:60]!r})",
        hint or replace_hint(path),
    )


def check_last_line(path: Path, *, separator: str, fields: int, layout: str) -> None:
    """Refuse a plain file whose last line is cut: no newline at its end and fewer than `fields` fields.

    For upstream files whose fields hold no quoted separators; `layout` names them in the message."""
    line = last_line_if_cut(path)
    found = len(line.split(separator)) if line is not None else fields
    if found < fields:
        raise looks_truncated(path, line, f"has {found} of the {fields} fields of {layout}")


# -- reading ----------------------------------------------------------------------------------


def open_text(path: Path, encoding: str = "utf-8") -> io.TextIOBase:
    """Open a plain or gzipped text file (decided by its first bytes, not its name)."""
    with open(path, "rb") as f:
        gzipped = f.read(2) == b"\x1f\x8b"
    if gzipped:
        return gzip.open(path, "rt", encoding=encoding, newline="")
    return open(path, encoding=encoding, newline="")


def extract_members(archive: Path, names: tuple[str, ...], folder: Path, *, publisher: str) -> list[Path]:
    """The named members of a zip or .tar.gz archive, unpacked into `folder` once (atomically), so polars can scan them.

    A member is matched by its file name wherever it sits in the archive (the first one found);
    one already in `folder` is not unpacked again. `publisher` names the archive in the message
    when a member is missing."""
    targets = {name: folder / name for name in names}
    wanted = {name for name, path in targets.items() if not path.is_file()}
    if wanted:
        for name, member in _members(archive, wanted):
            with atomic_path(targets[name]) as tmp, open(tmp, "wb") as out:
                shutil.copyfileobj(member, out, 1 << 20)
            wanted.discard(name)
        if wanted:
            raise SemrecError(
                f"{archive.name} has no {', '.join(sorted(wanted))}",
                f"this is not the {publisher} archive; {replace_hint(archive)}",
            )
    return [targets[name] for name in names]


def _members(archive: Path, wanted: set[str]) -> Iterator[tuple[str, IO[bytes]]]:
    """(file name, readable member) for each member whose file name is still in `wanted` when it is reached.

    A .tar.gz is read as a stream, in one pass (gzip has no index to seek by)."""
    if compression(archive) == "zip":
        with zipfile.ZipFile(archive) as z:
            for info in z.infolist():
                name = Path(info.filename).name
                if name in wanted and not info.is_dir():
                    with z.open(info) as member:
                        yield name, member
        return
    with tarfile.open(archive, "r|gz") as tar:
        for info in tar:
            name = Path(info.name).name
            if name in wanted and info.isfile():
                yield name, tar.extractfile(info)
