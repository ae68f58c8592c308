"""HTTP downloads against a local server: resume, retries, checksums, integrity, placement messages."""

import errno
import gzip
import hashlib
from pathlib import Path

import pytest
from werkzeug import Request, Response

from semrec.data import download
from semrec.data.download import RawFile, RawFiles, fetch
from semrec.errors import SemrecError, StageFailed
from semrec.report import RecordingReporter

BODY = bytes(range(256)) * 400  # 102,400 bytes


def ranged(body: bytes, requests: list):
    """A handler that honours `Range: bytes=N-` like a real file server, and records each request."""

    def handle(request: Request) -> Response:
        requests.append(dict(request.headers))
        header = request.headers.get("Range")
        if header:
            start = int(header.removeprefix("bytes=").removesuffix("-"))
            return Response(
                body[start:], status=206, headers={"Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"}
            )
        return Response(body)

    return handle


def test_fetch_streams_the_file_and_checks_its_sha256(httpserver, tmp_path):
    httpserver.expect_request("/f.bin").respond_with_data(BODY)
    dest = fetch(httpserver.url_for("/f.bin"), tmp_path / "f.bin", sha256=hashlib.sha256(BODY).hexdigest())
    assert dest.read_bytes() == BODY
    assert not (tmp_path / "f.bin.part").exists()


def test_a_partial_file_is_resumed_with_a_range_request(httpserver, tmp_path):
    seen: list = []
    httpserver.expect_request("/f.bin").respond_with_handler(ranged(BODY, seen))
    (tmp_path / "f.bin.part").write_bytes(BODY[:30000])
    fetch(httpserver.url_for("/f.bin"), tmp_path / "f.bin", md5=hashlib.md5(BODY).hexdigest())
    assert (tmp_path / "f.bin").read_bytes() == BODY
    assert seen[0]["Range"] == "bytes=30000-"


def test_a_cut_connection_is_retried_and_resumed_where_it_stopped(httpserver, tmp_path, monkeypatch):
    monkeypatch.setattr(download, "CHUNK", 10000)  # the bytes of a chunk in flight when the line drops are lost
    seen: list = []
    resume = ranged(BODY, seen)

    def cut_first(request: Request) -> Response:
        if seen:
            return resume(request)
        seen.append(dict(request.headers))

        def half():
            yield BODY[:40000]
            raise ConnectionError("cable pulled")

        return Response(half(), headers={"Content-Length": str(len(BODY))})

    httpserver.expect_request("/f.bin").respond_with_handler(cut_first)
    reporter = RecordingReporter()
    fetch(httpserver.url_for("/f.bin"), tmp_path / "f.bin", reporter=reporter, backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == BODY
    assert "Range" not in seen[0] and seen[1]["Range"] == "bytes=40000-"
    assert "retrying" in reporter.text()


def test_a_server_that_ignores_range_restarts_the_file(httpserver, tmp_path):
    httpserver.expect_request("/f.bin").respond_with_data(BODY)  # always 200, whole body
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes from another version")
    fetch(httpserver.url_for("/f.bin"), tmp_path / "f.bin")
    assert (tmp_path / "f.bin").read_bytes() == BODY


def test_a_500_is_retried_then_succeeds(httpserver, tmp_path):
    httpserver.expect_ordered_request("/f.bin").respond_with_data("busy", status=500)
    httpserver.expect_ordered_request("/f.bin").respond_with_data("busy", status=503)
    httpserver.expect_ordered_request("/f.bin").respond_with_data(BODY)
    reporter = RecordingReporter()
    fetch(httpserver.url_for("/f.bin"), tmp_path / "f.bin", reporter=reporter, backoff=0)
    assert (tmp_path / "f.bin").read_bytes() == BODY
    assert "HTTP 500" in reporter.text() and "HTTP 503" in reporter.text()


def test_retries_that_run_out_fail_and_say_how_to_resume(httpserver, tmp_path):
    httpserver.expect_request("/f.bin").respond_with_data("down", status=502)
    with pytest.raises(StageFailed, match=r"failed 3 times.*HTTP 502"):
        fetch(httpserver.url_for("/f.bin"), tmp_path / "f.bin", retries=2, backoff=0)
    assert len(httpserver.log) == 3


def test_a_404_is_not_retried_and_says_where_to_put_the_file(httpserver, monkeypatch):
    httpserver.expect_request("/ml-1m.zip").respond_with_data("not here", status=404)
    monkeypatch.setenv(download.MIRROR_ENV, httpserver.url_for("/"))
    raw = RawFile("ml-1m.zip", "https://files.grouplens.org/datasets/movielens/ml-1m.zip")
    with pytest.raises(SemrecError) as caught:
        RawFiles("movielens-1m").get(raw)
    error = caught.value
    assert httpserver.url_for("/ml-1m.zip") in error.message and "404" in error.message and "ml-1m.zip" in error.message
    assert "https://files.grouplens.org/datasets/movielens/ml-1m.zip" in error.hint
    assert str(download.dataset_cache("movielens-1m")) in error.hint and "data.local_dir" in error.hint
    assert len(httpserver.log) == 1


def test_a_checksum_mismatch_is_fetched_again_once_then_fails(httpserver, tmp_path):
    httpserver.expect_request("/f.bin").respond_with_data(b"not the file we recorded")
    reporter = RecordingReporter()
    with pytest.raises(StageFailed, match="sha256"):
        fetch(httpserver.url_for("/f.bin"), tmp_path / "f.bin", sha256="0" * 64, reporter=reporter)
    assert len(httpserver.log) == 2
    assert not (tmp_path / "f.bin").exists()
    assert (tmp_path / "f.bin.corrupt").read_bytes() == b"not the file we recorded"
    assert "fetching it again" in reporter.text()


def test_a_truncated_gzip_is_set_aside_and_fetched_again(httpserver, tmp_path):
    good = gzip.compress(b'{"asin": "B1"}\n' * 5000)
    httpserver.expect_ordered_request("/x.json.gz").respond_with_data(good[: len(good) // 2])
    httpserver.expect_ordered_request("/x.json.gz").respond_with_data(good)
    reporter = RecordingReporter()
    fetch(httpserver.url_for("/x.json.gz"), tmp_path / "x.json.gz", reporter=reporter)
    assert (tmp_path / "x.json.gz").read_bytes() == good
    assert (tmp_path / "x.json.gz.corrupt").read_bytes() == good[: len(good) // 2]
    assert "gzip" in reporter.text()


def test_a_truncated_zip_in_the_cache_is_never_parsed(tmp_path, monkeypatch):
    cache = download.dataset_cache("movielens-1m")
    cache.mkdir(parents=True)
    (cache / "ml-1m.zip").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(SemrecError, match="damaged"):
        RawFiles("movielens-1m").get(RawFile("ml-1m.zip", "https://example.invalid/ml-1m.zip"))


def test_a_full_disk_keeps_the_partial_file_for_the_next_run(httpserver, tmp_path, monkeypatch):
    httpserver.expect_request("/f.bin").respond_with_data(BODY)
    real_open = open

    class FillsUp:
        def __init__(self, handle):
            self.handle, self.written = handle, 0

        def write(self, data):
            if self.written >= 50000:
                raise OSError(errno.ENOSPC, "No space left on device")
            self.written += self.handle.write(data[:50000])
            return len(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

    monkeypatch.setattr(download, "CHUNK", 50000)
    monkeypatch.setattr(download, "open", lambda path, mode="r", *a, **k: FillsUp(real_open(path, mode)), raising=False)
    with pytest.raises(SemrecError, match="disk is full") as caught:
        fetch(httpserver.url_for("/f.bin"), tmp_path / "f.bin")
    assert caught.value.exit_code == 1 and "resumes" in caught.value.hint
    assert (tmp_path / "f.bin.part").read_bytes() == BODY[:50000]


def test_offline_without_the_file_names_the_file_and_its_url():
    raw = RawFile("meta_Beauty.json.gz", "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/meta_Beauty.json.gz")
    with pytest.raises(SemrecError, match="offline, and meta_Beauty.json.gz is not in the cache") as caught:
        RawFiles("amazon-beauty", offline=True).get(raw)
    assert raw.url in caught.value.hint


def test_local_dir_is_used_without_network_and_accepts_a_gzipped_copy(tmp_path):
    (tmp_path / "datamaps.json.gz").write_bytes(gzip.compress(b"{}"))
    files = RawFiles("amazon-beauty", local_dir=tmp_path)
    assert files.get(RawFile("datamaps.json", "http://unreachable.invalid/datamaps.json")) == tmp_path / "datamaps.json.gz"
    with pytest.raises(SemrecError, match=r"sequential_data.txt is not in data.local_dir") as caught:
        files.get(RawFile("sequential_data.txt", "https://example.org/Beauty.txt"))
    assert "https://example.org/Beauty.txt" in caught.value.hint and str(tmp_path) in caught.value.hint


def test_open_text_reads_plain_and_gzipped_files_alike(tmp_path):
    (tmp_path / "a.txt").write_text("one\ntwo\n")
    (tmp_path / "b.txt").write_bytes(gzip.compress(b"one\ntwo\n"))
    for name in ("a.txt", "b.txt"):
        with download.open_text(Path(tmp_path / name)) as f:
            assert f.read().split() == ["one", "two"]


def test_a_local_dir_that_is_not_a_folder_is_named(make_workspace, tmp_path):
    ws = make_workspace("ml-1m", **{"data.local_dir": "no/such/folder"})
    with pytest.raises(SemrecError, match=r"data.local_dir = 'no/such/folder' is not a folder") as caught:
        ws.ensure("download")
    assert str(ws.root / "no/such/folder") in caught.value.message
