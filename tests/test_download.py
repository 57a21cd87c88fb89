"""bafusion.data.download against a local threaded HTTP server on 127.0.0.1 (no internet).

``LocalServer`` is also used by test_coco.py and test_acquire.py (``from test_download import
LocalServer``)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import re
import stat
import sys
import threading
import time
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from overlay_layer import overlay_lower_layer

from bafusion.data.download import (
    MAX_ZIP_RATIO,
    RATIO_MIN_BYTES,
    Checksum,
    ChecksumError,
    DownloadError,
    FetchJob,
    check_zip,
    extract_zip,
    fetch,
    fetch_many,
    join_url,
    read_zip_member,
    verify,
)
from bafusion.atomic import part_path
from bafusion.errors import UserError


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: object, client_address: object) -> None:
        """A client that gave up (timeout test) breaks the pipe: expected, not worth a traceback."""
        if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            super().handle_error(request, client_address)


class LocalServer:
    """A threaded HTTP server on 127.0.0.1 (port 0) serving ``files`` (path -> bytes).

    Scripted misbehaviour, consumed one request at a time per path:
    ``fail[path]``: HTTP statuses to answer first; ``truncate[path]``: cut the connection
    after this many body bytes; ``delay[path]``: seconds to wait before answering.
    ``honour_range`` False makes it ignore ``Range`` (answer 200 with the whole file).
    ``etag[path]`` / ``last_modified[path]``: validators it sends; a ``Range`` request whose
    ``If-Range`` does not match them gets the whole file (200), unless ``honour_if_range`` is
    False (then it sends the range of whatever it has now, with its current validators).
    ``validators_on_416`` True makes its 416 (a ``Range`` past the end) carry them too.
    Every request is recorded as ``(path, Range header or None)``, and its ``If-Range`` in
    ``if_range`` as ``(path, If-Range header or None)``.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.fail: dict[str, list[int]] = {}
        self.truncate: dict[str, list[int]] = {}
        self.delay: dict[str, list[float]] = {}
        self.honour_range = True
        self.etag: dict[str, str] = {}
        self.last_modified: dict[str, str] = {}
        self.honour_if_range = True
        self.validators_on_416 = False
        self.requests: list[tuple[str, str | None]] = []
        self.if_range: list[tuple[str, str | None]] = []
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0].lstrip("/")
                rng = self.headers.get("Range")
                with owner.lock:
                    owner.requests.append((path, rng))
                    owner.if_range.append((path, self.headers.get("If-Range")))
                    fail = owner.fail.get(path, [])
                    status = fail.pop(0) if fail else None
                    cut = owner.truncate.get(path, [])
                    cut_at = cut.pop(0) if cut else None
                    dl = owner.delay.get(path, [])
                    wait = dl.pop(0) if dl else 0.0
                if wait:
                    time.sleep(wait)
                if status is not None:
                    self.send_error(status)
                    return
                if path not in owner.files:
                    self.send_error(404)
                    return
                body = owner.files[path]
                start = 0
                validators = {v for v in (owner.etag.get(path), owner.last_modified.get(path)) if v}
                cond = self.headers.get("If-Range")
                if cond is not None and owner.honour_if_range and cond not in validators:
                    rng = None  # the file changed since the validator: the whole file
                if rng and owner.honour_range and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[len("bytes=") : -1])
                    if start >= len(body):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(body)}")
                        self.send_header("Content-Length", "0")
                        if owner.validators_on_416 and path in owner.etag:
                            self.send_header("ETag", owner.etag[path])
                        if owner.validators_on_416 and path in owner.last_modified:
                            self.send_header("Last-Modified", owner.last_modified[path])
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Accept-Ranges", "bytes")
                if path in owner.etag:
                    self.send_header("ETag", owner.etag[path])
                if path in owner.last_modified:
                    self.send_header("Last-Modified", owner.last_modified[path])
                self.end_headers()
                payload = body[start:]
                if cut_at is not None:
                    self.wfile.write(payload[:cut_at])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(payload)

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/"

    def url(self, path: str) -> str:
        return self.base + path

    def requests_for(self, path: str) -> list[str | None]:
        return [r for p, r in self.requests if p == path]

    def __enter__(self) -> LocalServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server() -> Iterator[LocalServer]:
    with LocalServer() as s:
        yield s


def sha256(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


PAYLOAD = os.urandom(300_000)  # several chunks of download.CHUNK


def test_fetch_verifies_then_skips(server: LocalServer, tmp_path: Path) -> None:
    server.files["a.bin"] = PAYLOAD
    dest = tmp_path / "x" / "a.bin"
    r = fetch(server.url("a.bin"), dest, checksum=sha256(PAYLOAD), progress=False)
    assert r.status == "downloaded" and r.bytes == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "x" / "a.bin.part").exists()
    r2 = fetch(server.url("a.bin"), dest, checksum=sha256(PAYLOAD), progress=False)
    assert r2.status == "skipped"
    assert len(server.requests) == 1  # the second call did not touch the network


def test_existing_file_with_the_wrong_digest_is_fetched_again(server: LocalServer, tmp_path: Path) -> None:
    # A file already present is skipped only when its checksum matches (module docstring): a
    # stale or tampered one is downloaded again, never kept as "verified".
    server.files["a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"stale or tampered")
    assert not verify(dest, Checksum.parse(sha256(PAYLOAD)))
    assert verify(dest, Checksum.parse(sha256(b"stale or tampered")))
    r = fetch(server.url("a.bin"), dest, checksum=sha256(PAYLOAD), progress=False)
    assert r.status == "downloaded"
    assert dest.read_bytes() == PAYLOAD
    assert server.requests_for("a.bin") == [None]


def test_interrupted_download_resumes_with_range(server: LocalServer, tmp_path: Path) -> None:
    server.files["big.bin"] = PAYLOAD
    server.truncate["big.bin"] = [100_000]  # the first answer dies after 100,000 bytes
    dest = tmp_path / "big.bin"
    r = fetch(server.url("big.bin"), dest, checksum=sha256(PAYLOAD), backoff=0.01, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests_for("big.bin") == [None, "bytes=100000-"]
    assert r.status == "downloaded"


def test_part_left_by_a_killed_run_is_resumed(server: LocalServer, tmp_path: Path) -> None:
    server.files["big.bin"] = PAYLOAD
    dest = tmp_path / "big.bin"
    (tmp_path / "big.bin.part").write_bytes(PAYLOAD[:123_456])
    r = fetch(server.url("big.bin"), dest, checksum=sha256(PAYLOAD), progress=False)
    assert server.requests_for("big.bin") == ["bytes=123456-"]
    assert dest.read_bytes() == PAYLOAD
    assert r.resumed_from == 123_456 and r.bytes == len(PAYLOAD) - 123_456


@pytest.mark.parametrize("verified", [True, False])  # without a checksum: resumed with If-Range
@pytest.mark.parametrize("stop", [KeyboardInterrupt(), SystemExit(143)])  # Ctrl-C; SIGTERM as the CLI raises it
def test_part_of_an_interrupted_run_is_kept_and_resumed(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: BaseException, verified: bool
) -> None:
    import bafusion.data.download as download

    server.files["big.bin"] = PAYLOAD
    checksum = sha256(PAYLOAD) if verified else None
    if not verified:
        server.etag["big.bin"] = '"e"'
    real_bar = download._bar

    def stopping_bar(*args: object, **kwargs: object) -> object:
        bar = real_bar(*args, **kwargs)

        def update(n: int) -> None:
            raise stop  # the signal arrives after the first chunk is written

        bar.update = update
        return bar

    monkeypatch.setattr(download, "_bar", stopping_bar)
    dest = tmp_path / "big.bin"
    with pytest.raises(type(stop)):
        fetch(server.url("big.bin"), dest, checksum=checksum, progress=False)
    kept = (tmp_path / "big.bin.part").stat().st_size
    assert 0 < kept < len(PAYLOAD) and not dest.exists()
    monkeypatch.setattr(download, "_bar", real_bar)
    r = fetch(server.url("big.bin"), dest, checksum=checksum, progress=False)
    assert server.requests_for("big.bin") == [None, f"bytes={kept}-"]
    assert dest.read_bytes() == PAYLOAD and r.resumed_from == kept
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_stale_part_of_another_file_restarts_once(server: LocalServer, tmp_path: Path) -> None:
    server.files["big.bin"] = PAYLOAD
    (tmp_path / "big.bin.part").write_bytes(b"\0" * 1000)  # not a prefix of PAYLOAD
    fetch(server.url("big.bin"), tmp_path / "big.bin", checksum=sha256(PAYLOAD), progress=False)
    assert server.requests_for("big.bin") == ["bytes=1000-", None]
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_failed_transfer_keeps_its_bytes_for_the_next_run(server: LocalServer, tmp_path: Path) -> None:
    server.files["big.bin"] = PAYLOAD
    server.truncate["big.bin"] = [50_000, 50_000]  # both attempts of the first run break
    dest = tmp_path / "big.bin"
    with pytest.raises(DownloadError, match="rerun resumes"):
        fetch(server.url("big.bin"), dest, checksum=sha256(PAYLOAD), retries=1, backoff=0.01, progress=False)
    assert not dest.exists() and (tmp_path / "big.bin.part").stat().st_size == 100_000
    fetch(server.url("big.bin"), dest, checksum=sha256(PAYLOAD), progress=False)
    assert server.requests_for("big.bin") == [None, "bytes=50000-", "bytes=100000-"]
    assert dest.read_bytes() == PAYLOAD and not (tmp_path / "big.bin.part").exists()


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGXFSZ"), reason="RLIMIT_FSIZE and SIGXFSZ (POSIX)")
def test_a_failed_write_of_the_part_names_it_and_is_not_retried(server: LocalServer, tmp_path: Path) -> None:
    """A write of the ``.part`` that fails on this machine (a full disk; here a file-size limit)
    was taken for a transfer error: retried with back-off and reported as "transfer interrupted
    ... (OSError: [Errno 28] No space left on device); ... a rerun resumes from there", or, when
    it failed in the flush at close, raised without a file name, which the command said as its
    output folder's ("am: No space left on device") when the full disk was the cache's. It is
    now an OSError naming the part, not retried, and the part is deleted."""
    import errno
    import resource
    import signal

    server.files["big.bin"] = PAYLOAD
    dest = tmp_path / "big.bin"
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit: EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, old_limit[1]))
    try:
        with pytest.raises(OSError) as e:
            fetch(server.url("big.bin"), dest, checksum=sha256(PAYLOAD), retries=3, backoff=0.01, progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert e.value.errno == errno.EFBIG and e.value.filename == str(part_path(dest)), repr(e.value)
    assert server.requests_for("big.bin") == [None]  # not retried
    assert not dest.exists() and not part_path(dest).exists()
    fetch(server.url("big.bin"), dest, checksum=sha256(PAYLOAD), progress=False)  # room again: fetched
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGXFSZ"), reason="RLIMIT_FSIZE and SIGXFSZ (POSIX)")
def test_a_local_copy_that_fails_for_its_disk_names_the_part_not_the_source(tmp_path: Path) -> None:
    """A ``file://`` URL or a folder copied into a full cache said "<source>: cannot copy
    <source>: [Errno 28] No space left on device: ...", leading with the source that was not at
    fault. It names the part as a failed download's write does; nothing is left."""
    import errno
    import resource
    import signal

    src = tmp_path / "src" / "big.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    dest = tmp_path / "cache" / "big.bin"
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, old_limit[1]))
    try:
        with pytest.raises(OSError) as e:
            fetch(src.as_uri(), dest, checksum=sha256(PAYLOAD), progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert e.value.errno == errno.EFBIG and e.value.filename == str(part_path(dest)), repr(e.value)
    assert not dest.exists() and not part_path(dest).exists()


@pytest.mark.skipif(not hasattr(__import__("signal"), "SIGXFSZ"), reason="RLIMIT_FSIZE and SIGXFSZ (POSIX)")
def test_fetch_many_raises_a_failed_write_of_a_part_naming_it(server: LocalServer, tmp_path: Path) -> None:
    """fetch_many (download-eval, download-coco) collected a failed write of a ``.part`` (a full
    cache disk; here a file-size limit) as a failure of its URL: "N of M eval files failed;
    first: <url>: _PartWriteError: [Errno 28] ...", leading with the URL that was not at fault
    and a private class name, and went on with the other files, which failed alike. It raises
    fetch's OSError naming the part, and the files not yet started are not tried."""
    import errno
    import resource
    import signal

    for i in range(6):
        server.files[f"f{i}"] = PAYLOAD
    jobs = [FetchJob(server.url(f"f{i}"), tmp_path / f"f{i}", sha256(PAYLOAD)) for i in range(6)]
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit: EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, old_limit[1]))
    try:
        with pytest.raises(OSError) as e:
            fetch_many(jobs, workers=1, retries=3, backoff=0.01, progress=False)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)
    assert not isinstance(e.value, UserError), repr(e.value)
    assert e.value.errno == errno.EFBIG and e.value.filename == str(part_path(jobs[0].dest)), repr(e.value)
    assert sum(len(server.requests_for(f"f{i}")) for i in range(6)) < 6  # the others left undone
    assert not any(part_path(j.dest).exists() or j.dest.exists() for j in jobs)


def test_server_ignoring_range_restarts_from_zero(server: LocalServer, tmp_path: Path) -> None:
    server.files["big.bin"] = PAYLOAD
    server.honour_range = False
    (tmp_path / "big.bin.part").write_bytes(PAYLOAD[:5000])
    fetch(server.url("big.bin"), tmp_path / "big.bin", checksum=sha256(PAYLOAD), progress=False)
    assert (tmp_path / "big.bin").read_bytes() == PAYLOAD


def test_wrong_checksum_fails_and_leaves_nothing(server: LocalServer, tmp_path: Path) -> None:
    server.files["a.bin"] = PAYLOAD
    wrong = "sha256:" + "0" * 64
    with pytest.raises(ChecksumError) as e:
        fetch(server.url("a.bin"), tmp_path / "a.bin", checksum=wrong, progress=False)
    msg = str(e.value)
    assert server.url("a.bin") in msg and "0" * 64 in msg and hashlib.sha256(PAYLOAD).hexdigest() in msg
    assert list(tmp_path.iterdir()) == []


def test_http_500_is_retried_then_reported(server: LocalServer, tmp_path: Path) -> None:
    server.fail["a.bin"] = [500] * 10
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as e:
        fetch(server.url("a.bin"), tmp_path / "a.bin", retries=2, backoff=0.01, progress=False)
    assert len(server.requests_for("a.bin")) == 3  # one attempt + 2 retries
    assert server.url("a.bin") in str(e.value) and "HTTP 500" in str(e.value) and "3 attempts" in str(e.value)
    assert time.monotonic() - t0 < 5
    assert list(tmp_path.iterdir()) == []


def test_transient_500_then_success(server: LocalServer, tmp_path: Path) -> None:
    server.files["a.bin"] = PAYLOAD
    server.fail["a.bin"] = [500, 503]
    fetch(server.url("a.bin"), tmp_path / "a.bin", checksum=sha256(PAYLOAD), retries=3, backoff=0.01, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == PAYLOAD
    assert len(server.requests_for("a.bin")) == 3


def test_404_is_not_retried(server: LocalServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(server.url("missing.bin"), tmp_path / "m.bin", retries=3, backoff=0.01, progress=False)
    assert len(server.requests_for("missing.bin")) == 1
    assert list(tmp_path.iterdir()) == []


def test_timeout_is_retried(server: LocalServer, tmp_path: Path) -> None:
    server.files["a.bin"] = b"hello"
    server.delay["a.bin"] = [1.5]
    fetch(server.url("a.bin"), tmp_path / "a.bin", checksum=sha256(b"hello"), timeout=0.3, backoff=0.01, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == b"hello"
    assert len(server.requests_for("a.bin")) == 2


def test_a_timeout_longer_than_a_day_is_refused_before_any_connection(server: LocalServer, tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """``download.net.timeout: 1e10`` (``--timeout 1e10``) passed the schema and the option, and
    the first connection died in ``socket.settimeout`` (OverflowError, "internal error": Python's
    sockets take at most about 9.2e9 s). A day is the most, in the schema, the option and fetch."""
    import socket

    from bafusion.cli import main
    from bafusion.data.download import MAX_TIMEOUT
    from bafusion.schema import maximum, problems

    with socket.socket() as sock:
        sock.settimeout(MAX_TIMEOUT)  # taken
        with pytest.raises(OverflowError):
            sock.settimeout(1e10)
    assert maximum("download.net.timeout") == MAX_TIMEOUT
    assert problems({"download": {"net": {"timeout": 1e10}}}) == ["download.net.timeout: 10000000000.0 is not a number <= 86400"]
    server.files["a.bin"] = b"hello"
    with pytest.raises(UserError, match=r"download timeout must be more than 0 and at most 86400 s \(a day\), got 10000000000\.0"):
        fetch(server.url("a.bin"), tmp_path / "a.bin", timeout=1e10, progress=False)
    assert server.requests_for("a.bin") == [] and not (tmp_path / "a.bin").exists()
    fetch(server.url("a.bin"), tmp_path / "a.bin", timeout=MAX_TIMEOUT, progress=False)
    assert (tmp_path / "a.bin").read_bytes() == b"hello"
    with pytest.raises(SystemExit) as e:  # argparse's usage error
        main(["download-eval", "--out", str(tmp_path / "e"), "--base-url", server.url(""), "--timeout", "1e10"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "--timeout: must be at most 86400, got 1e10" in err and "internal error" not in err, err


def test_file_url_and_plain_path(tmp_path: Path) -> None:
    src = tmp_path / "src dir" / "f.bin"
    src.parent.mkdir()
    src.write_bytes(b"local bytes")
    fetch(src.as_uri(), tmp_path / "a" / "f.bin", checksum=sha256(b"local bytes"), progress=False)
    fetch(str(src), tmp_path / "b" / "f.bin", checksum=sha256(b"local bytes"), progress=False)
    fetch(join_url(str(src.parent), "f.bin"), tmp_path / "c" / "f.bin", progress=False)
    for d in "abc":
        assert (tmp_path / d / "f.bin").read_bytes() == b"local bytes"
    with pytest.raises(ChecksumError):
        fetch(src.as_uri(), tmp_path / "d" / "f.bin", checksum=sha256(b"other"), progress=False)
    assert list((tmp_path / "d").iterdir()) == []


def test_unverified_file_rejected_by_validate_is_not_kept_nor_skipped(server: LocalServer, tmp_path: Path) -> None:
    def zip_only(p: Path) -> None:
        if not zipfile.is_zipfile(p):
            raise UserError("not a zip archive")

    html = b"<!doctype html><html><body>Login required</body></html>"
    server.files["a.zip"] = html  # a server answering 200 with a web page
    dest = tmp_path / "c" / "a.zip"
    with pytest.raises(DownloadError, match="rejected: not a zip archive"):
        fetch(server.url("a.zip"), dest, retries=0, progress=False, validate=zip_only)
    assert list(dest.parent.iterdir()) == []
    dest.write_bytes(html)  # an earlier version cached it unverified: it is fetched again
    good = zip_bytes({"x.txt": b"x"})
    server.files["a.zip"] = good
    r = fetch(server.url("a.zip"), dest, retries=0, progress=False, validate=zip_only)
    assert r.status == "downloaded" and dest.read_bytes() == good
    n = len(server.requests)
    assert fetch(server.url("a.zip"), dest, progress=False, validate=zip_only).status == "skipped"
    assert len(server.requests) == n


@pytest.mark.parametrize(
    "url, problem",
    [
        ("http://[bad/", "malformed URL (Invalid IPv6 URL)"),
        ("http://host:port/x", "malformed URL"),
        ("https:///no-host", "malformed URL (no host name)"),
        ("ftp://example.org/x.zip", "unsupported URL scheme ftp"),
        ("s3://bucket/x.zip", "unsupported URL scheme s3"),
    ],
)
def test_bad_url_is_one_line_error(tmp_path: Path, url: str, problem: str) -> None:
    with pytest.raises(UserError) as e:
        join_url(url, "x.zip")
    assert str(e.value).startswith(url + ": ") and problem in str(e.value)
    with pytest.raises(UserError, match="URL"):
        fetch(url, tmp_path / "x.zip", progress=False)
    assert not list(tmp_path.iterdir())  # not taken for a local path either


def test_a_stopped_fetch_many_fetches_no_more(server: LocalServer, tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C (or SIGTERM) during fetch_many stopped the main thread only: the pool's exit then
    waited for every queued download, so `download-eval` stopped at 20 of 40 files fetched the
    other 20 without a word (9 s from the slow local server; the 1400 COCO candidates would be
    minutes). Queued files are now cancelled and a running one stops at its next chunk, its
    ``.part`` kept for the rerun, which resumes it."""
    import signal

    import bafusion.data.download as download
    from bafusion import atomic

    for i in range(6):
        server.files[f"f{i}"] = PAYLOAD
    jobs = [FetchJob(server.url(f"f{i}"), tmp_path / f"f{i}", sha256(PAYLOAD)) for i in range(6)]
    real = download.as_completed
    real_write = download._write_part
    in_f1 = threading.Event()

    def write_then_wait_in_f1(f, chunk, part):  # type: ignore[no-untyped-def]
        real_write(f, chunk, part)
        if part.name == "f1.part":  # f1 is running, some bytes kept, when the stop comes
            in_f1.set()
            deadline = time.monotonic() + 10
            while atomic.stop_requested() is None and time.monotonic() < deadline:
                time.sleep(0.01)

    def stopped_after_the_first(fs):  # type: ignore[no-untyped-def]
        for fut in real(fs):
            yield fut
            in_f1.wait(10)
            atomic.request_stop(signal.SIGINT)  # as the command's Ctrl-C handler does, then raises
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "_write_part", write_then_wait_in_f1)

    monkeypatch.setattr(download, "as_completed", stopped_after_the_first)
    try:
        with pytest.raises(KeyboardInterrupt):
            fetch_many(jobs, workers=1, retries=0, progress=False)
    finally:
        atomic.clear_stop()
    assert [p for p, _ in server.requests] == ["f0", "f1"]
    kept = (tmp_path / "f1.part").stat().st_size
    assert (tmp_path / "f0").exists() and not (tmp_path / "f1").exists() and 0 < kept < len(PAYLOAD)
    monkeypatch.setattr(download, "as_completed", real)
    monkeypatch.setattr(download, "_write_part", real_write)
    s = fetch_many(jobs, workers=1, retries=0, progress=False)
    assert (len(s.downloaded), len(s.skipped), s.failed) == (5, 1, [])
    assert server.requests_for("f1")[-1] == f"bytes={kept}-"
    assert all((tmp_path / f"f{i}").read_bytes() == PAYLOAD for i in range(6))


def test_a_stopped_fetch_many_does_not_wait_to_retry(server: LocalServer, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A download of fetch_many waiting to retry (the server answered 503) when the command was
    stopped went on through every wait and attempt left: its worker thread is not interrupted
    by the signal, and the pool's exit waits for it (30 s here, with backoff 2 and 4 retries;
    minutes against a server that does not answer). The stop ends the wait."""
    import signal

    import bafusion.data.download as download
    from bafusion import atomic

    for i in range(3):
        server.files[f"f{i}"] = PAYLOAD
    server.fail["f1"] = [503] * 10
    jobs = [FetchJob(server.url(f"f{i}"), tmp_path / f"f{i}", sha256(PAYLOAD)) for i in range(3)]
    real = download.as_completed

    def stopped_after_the_first(fs):  # type: ignore[no-untyped-def]
        for fut in real(fs):
            yield fut
            deadline = time.monotonic() + 10
            while not server.requests_for("f1") and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)  # f1 failed and waits to retry
            atomic.request_stop(signal.SIGINT)  # as the command's Ctrl-C handler does, then raises
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "as_completed", stopped_after_the_first)
    t0 = time.monotonic()
    try:
        with pytest.raises(KeyboardInterrupt):
            fetch_many(jobs, workers=1, retries=4, backoff=2.0, progress=False)
    finally:
        atomic.clear_stop()
    assert [p for p, _ in server.requests] == ["f0", "f1"]  # no retry of f1, nor f2
    assert time.monotonic() - t0 < 10


def test_fetch_many_summary(server: LocalServer, tmp_path: Path) -> None:
    for i in range(4):
        server.files[f"f{i}"] = bytes([i]) * 1000
    (tmp_path / "f0").write_bytes(bytes([0]) * 1000)  # already present and verified
    jobs = [FetchJob(server.url(f"f{i}"), tmp_path / f"f{i}", sha256(bytes([i]) * 1000)) for i in range(4)]
    jobs.append(FetchJob(server.url("nope"), tmp_path / "nope"))
    s = fetch_many(jobs, workers=3, retries=1, backoff=0.01, progress=False)
    assert len(s.downloaded) == 3 and len(s.skipped) == 1 and len(s.failed) == 1
    assert s.failed[0][0] == server.url("nope") and "404" in s.failed[0][1]
    assert s.bytes == 3000
    text = s.format("files")
    assert "3 downloaded" in text and "1 skipped" in text and "1 failed" in text and server.url("nope") in text


def test_no_bar_when_stderr_is_not_a_terminal(server: LocalServer, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    # the bars were drawn (only less often) into a log: carriage-return clutter, against the
    # README and bafusion.progress
    server.files["f"] = PAYLOAD
    fetch(server.url("f"), tmp_path / "a.bin", checksum=sha256(PAYLOAD), progress=True)
    fetch_many([FetchJob(server.url("f"), tmp_path / "b.bin", sha256(PAYLOAD))], workers=1, progress=True)
    assert "\r" not in capsys.readouterr().err


def test_downloads_say_how_far_they_got_in_a_log(server: LocalServer, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str],
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """With stderr a log the downloads (the COCO annotations, the alphamatting archives: many
    minutes) printed nothing until they ended: now a plain line at most every
    bafusion.progress.PLAIN_INTERVAL_S seconds and one at the end, without carriage returns."""
    import bafusion.progress as progress

    server.files["f"] = PAYLOAD
    monkeypatch.setattr(progress, "PLAIN_INTERVAL_S", 0.0, raising=False)  # as if it took longer than it
    fetch(server.url("f"), tmp_path / "a.bin", checksum=sha256(PAYLOAD), progress=True)
    fetch_many([FetchJob(server.url("f"), tmp_path / "b.bin", sha256(PAYLOAD))], workers=1, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err, err
    lines = err.splitlines()
    assert any("100% 293k/293k B [" in line for line in lines), lines
    assert any("100% 1/1 file [" in line for line in lines), lines


def test_checksum_parse() -> None:
    assert Checksum.parse("MD5:ABCDEF0123456789abcdef0123456789") == Checksum("md5", "abcdef0123456789abcdef0123456789")
    assert Checksum.parse("a" * 64) == Checksum("sha256", "a" * 64)
    assert Checksum.parse("") is None
    with pytest.raises(UserError):
        Checksum.parse("crc:1234")
    with pytest.raises(UserError):
        Checksum.parse("sha256:xyz")
    for text in ("md5:abc", "sha256:" + "a" * 32, "sha1:" + "a" * 64):  # were accepted, failing after the download
        with pytest.raises(UserError, match="hex digits, not"):
            Checksum.parse(text)


# ---------------------------------------------------------------------------------------------
# zip extraction


def make_zip(path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def test_extract_zip_strips_top_folder(tmp_path: Path) -> None:
    z = make_zip(tmp_path / "a.zip", {"top/GT01.png": b"1", "top/sub/GT02.png": b"2"})
    target = tmp_path / "out" / "input"
    files = extract_zip(z, target)
    assert sorted(p.relative_to(target).as_posix() for p in files) == ["GT01.png", "sub/GT02.png"]
    assert (target / "GT01.png").read_bytes() == b"1"
    # re-extracting replaces the folder whole, and leaves no temporary folders behind
    z2 = make_zip(tmp_path / "b.zip", {"GT03.png": b"3"})
    extract_zip(z2, target)
    assert sorted(p.name for p in target.iterdir()) == ["GT03.png"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["input"]


def test_extract_zips_temporary_folder_left_by_a_killed_run_is_removed_by_the_next_and_only_it(tmp_path: Path) -> None:
    """A run killed (SIGKILL) while extracting left its temporary folder
    ``.<target>.extract-<pid>-<thread>``, unmarked, which no later run removed (one per killed
    run, each as big as the archive). It is now ``.<target>.part-*``, marked as bafusion's
    (:func:`bafusion.atomic.part_folder`), and the next extraction there removes it; a folder of
    the same pattern without the marker (the user's) is kept."""
    import subprocess
    import sys

    z = make_zip(tmp_path / "a.zip", {"GT01.png": b"1", "sub/GT02.png": b"2"})
    work = tmp_path / "work"
    work.mkdir()
    target = work / "input"
    code = ("import os, signal, sys\nimport bafusion.data.download as d\n"
            "d.sync_tree = lambda folder, final: os.kill(os.getpid(), signal.SIGKILL)  # killed once all is extracted\n"
            "d.extract_zip(sys.argv[1], sys.argv[2])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(z), str(target)], check=False)
    assert proc.returncode == -9
    (left,) = work.iterdir()  # the killed run's temporary folder, holding what it extracted
    assert left.name.startswith(".input.") and (left / "input" / "GT01.png").read_bytes() == b"1"
    mine = work / ".input.part-mine"
    mine.mkdir()
    (mine / "keep").write_text("x")
    extract_zip(make_zip(tmp_path / "b.zip", {"GT03.png": b"3"}), target)
    assert sorted(p.name for p in target.iterdir()) == ["GT03.png"]
    assert sorted(p.name for p in work.iterdir()) == [".input.part-mine", "input"] and (mine / "keep").is_file()


def test_extract_zip_replaces_a_folder_in_one_step_where_it_can(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The earlier folder was renamed away, then the new one in: a SIGKILL between the two left
    neither. Where the system swaps two folders in one step (Linux ``renameat2``), the earlier
    folder is never renamed away (here, such a rename is the kill); elsewhere (the swap refused)
    the two renames replace it as before."""
    import bafusion.atomic as atomic
    import bafusion.data.download as download

    target = tmp_path / "input"
    extract_zip(make_zip(tmp_path / "a.zip", {"GT01.png": b"1"}), target)
    probe = tmp_path / "probe"
    probe.mkdir()
    if not atomic.exchange(probe, target) or not atomic.exchange(probe, target):  # there and back
        pytest.skip("this system or file system cannot swap two folders in one step (renameat2)")
    probe.rmdir()
    real = os.replace

    class Killed(BaseException):
        pass

    def replace(src, dst):
        if Path(src) == target:
            raise Killed
        return real(src, dst)

    monkeypatch.setattr(download.os, "replace", replace)
    flushed = []  # the new folder flushed to the disk before it is swapped in (sync_tree)
    monkeypatch.setattr(download, "sync_tree", lambda folder, final: flushed.append(sorted(os.listdir(folder))))
    extract_zip(make_zip(tmp_path / "b.zip", {"GT02.png": b"2"}), target)
    assert sorted(p.name for p in target.iterdir()) == ["GT02.png"] and flushed == [["GT02.png"]]
    monkeypatch.undo()
    monkeypatch.setattr(atomic, "exchange", lambda a, b: False)  # a file system that cannot swap
    extract_zip(make_zip(tmp_path / "c.zip", {"GT03.png": b"3"}), target)
    assert sorted(p.name for p in target.iterdir()) == ["GT03.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "b.zip", "c.zip", "input"]


@pytest.mark.parametrize("swap", [True, False])
def test_extract_zip_onto_a_file_is_refused_naming_it_and_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, swap: bool
) -> None:
    """A ``target`` that is a plain file was swapped away (``renameat2``) or renamed away and
    left hidden beside it as ``.<target>.extract-*`` (``.old-*``), the folder put in its place
    without a word (``shutil.rmtree(..., ignore_errors=True)`` of a file does nothing). Refused
    before anything is extracted now, naming it; the file and its folder are as they were."""
    import bafusion.atomic as atomic

    if not swap:
        monkeypatch.setattr(atomic, "exchange", lambda a, b: False)  # a file system that cannot swap
    z = make_zip(tmp_path / "a.zip", {"GT01.png": b"1"})
    work = tmp_path / "work"
    work.mkdir()
    target = work / "input"
    target.write_bytes(b"mine")
    with pytest.raises(UserError, match=re.escape(f"{target}: is a file, not a folder: {z} is extracted into a folder")):
        extract_zip(z, target)
    assert target.read_bytes() == b"mine" and sorted(p.name for p in work.iterdir()) == ["input"]
    target.unlink()
    target.symlink_to(tmp_path / "gone")
    with pytest.raises(UserError, match=re.escape(f"{target}: is a broken link, not a folder")):
        extract_zip(z, target)
    assert sorted(p.name for p in work.iterdir()) == ["input"] and target.is_symlink()


def test_members_that_hold_more_than_they_declare_are_refused(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The module docstring: the bytes actually written are counted too. CPython's zipfile stops
    reading a member at its declared size (then fails its CRC), so a reader that yields more is
    faked here; extract_zip must refuse, naming the archive, and leave no target behind."""
    z = make_zip(tmp_path / "a.zip", {"a.png": b"1" * 10, "b.png": b"2" * 10})
    real_open = zipfile.ZipFile.open

    def open_more(self, name, mode="r", *a, **k):
        if mode == "r":
            return io.BytesIO(b"x" * 5000)  # 5000 bytes from a member that declares 10
        return real_open(self, name, mode, *a, **k)

    monkeypatch.setattr(zipfile.ZipFile, "open", open_more)
    target = tmp_path / "out"
    with pytest.raises(UserError, match=r"a\.zip: refusing to extract: members hold more than they declare"):
        extract_zip(z, target)
    assert not target.exists()


@pytest.mark.parametrize(
    "members,symlinks",
    [
        ({"ok.png": b"1", "../evil.txt": b"x"}, None),
        ({"ok.png": b"1", "a/../../evil.txt": b"x"}, None),
        ({"ok.png": b"1", "/tmp/evil-abs.txt": b"x"}, None),
        ({"ok.png": b"1", "C:/evil.txt": b"x"}, None),
        ({"ok.png": b"1"}, {"link.png": "/etc/passwd"}),
    ],
)
def test_zip_slip_is_refused(tmp_path: Path, members: dict[str, bytes], symlinks: dict[str, str] | None) -> None:
    z = make_zip(tmp_path / "evil.zip", members, symlinks)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UserError, match="refusing to extract member"):
        extract_zip(z, work / "target")
    assert list(work.iterdir()) == []  # no target, no temporary folder
    assert not (tmp_path / "evil.txt").exists()
    with pytest.raises(UserError):
        check_zip(z)


def test_corrupt_zip_names_the_archive(tmp_path: Path) -> None:
    bad = tmp_path / "bad.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(UserError, match="bad.zip"):
        extract_zip(bad, tmp_path / "t")
    assert not (tmp_path / "t").exists()


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


# --- zip bombs (issue 16) ------------------------------------------------------------------


def deflated_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def test_a_member_compressed_beyond_the_ratio_limit_is_refused(tmp_path: Path) -> None:
    z = deflated_zip(tmp_path / "bomb.zip", {"ok.png": os.urandom(1000), "zeros.bin": bytes(4 << 20)})
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UserError, match=r"bomb\.zip: refusing to extract member 'zeros\.bin': compressed \d+ to 1, "
                       r"more than the limit of 200 to 1"):
        extract_zip(z, work / "target")
    assert list(work.iterdir()) == []
    with pytest.raises(UserError, match="bomb.zip"):
        read_zip_member(z, "zeros.bin")
    assert read_zip_member(z, "ok.png") != b""  # the other member is fine
    # the limit is a parameter: raised, the same archive extracts
    files = extract_zip(z, work / "target", max_ratio=None)
    assert sorted(p.name for p in files) == ["ok.png", "zeros.bin"]


def test_an_archive_unpacking_beyond_the_total_limit_is_refused(tmp_path: Path) -> None:
    z = deflated_zip(tmp_path / "big.zip", {"a.bin": os.urandom(3000), "b.bin": os.urandom(3000)})
    with pytest.raises(UserError, match=r"big\.zip: refusing to extract: its members unpack to 5\.9 KiB, more than the limit of 4\.9 KiB"):
        extract_zip(z, tmp_path / "t", max_bytes=5000)
    assert not (tmp_path / "t").exists()
    assert len(extract_zip(z, tmp_path / "t", max_bytes=6000)) == 2


def test_small_members_are_not_held_to_the_ratio(tmp_path: Path) -> None:
    """A small file of zeros compresses 1000x harmlessly (below RATIO_MIN_BYTES)."""
    z = deflated_zip(tmp_path / "small.zip", {"zeros.txt": bytes(RATIO_MIN_BYTES)})
    zi = zipfile.ZipFile(z).getinfo("zeros.txt")
    assert zi.file_size / zi.compress_size > MAX_ZIP_RATIO
    assert len(extract_zip(z, tmp_path / "t")) == 1


def test_many_small_members_are_held_to_the_ratio_together(tmp_path: Path) -> None:
    """Only members above RATIO_MIN_BYTES were held to the ratio: 256 members of 1 MiB of zeros
    each (284 KiB in all) unpacked to 256 MiB, and 16384 of them (about 18 MB) to the 16 GiB
    cap. The archive's members together, and its small members together, are held to it too
    once they unpack to more than RATIO_MIN_BYTES; nothing is written."""
    zeros = {f"top/m{i:03d}.bin": bytes(RATIO_MIN_BYTES) for i in range(8)}
    z = deflated_zip(tmp_path / "many.zip", zeros)
    assert all(i.file_size <= RATIO_MIN_BYTES for i in zipfile.ZipFile(z).infolist())
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(UserError, match=r"many\.zip: refusing to extract: its members unpack to 8\.0 MiB from "
                       r"[\d.]+ KiB, compressed \d+ to 1 together, more than the limit of 200 to 1"):
        extract_zip(z, work / "target")
    assert list(work.iterdir()) == []
    # hidden behind an incompressible member, which keeps the whole archive's ratio low
    rng = random.Random(0)
    z = deflated_zip(tmp_path / "mixed.zip", {"noise.bin": rng.randbytes(8 * RATIO_MIN_BYTES), **zeros})
    with pytest.raises(UserError, match=r"mixed\.zip: refusing to extract: its 8 members of up to 1\.0 MiB unpack "
                       r"to 8\.0 MiB from [\d.]+ KiB, compressed \d+ to 1 together"):
        check_zip(z)
    assert len(extract_zip(z, work / "target", max_ratio=None)) == 9  # the limit is a parameter
    # an archive of photos (barely compressed) and text (5-10x) is extracted as before
    text = b"".join(b'{"id": %d, "file_name": "%012d.jpg", "height": 480, "width": 640},\n' % (i, i)
                    for i in range(40000))
    z = deflated_zip(tmp_path / "fine.zip", {**{f"p{i:02d}.png": rng.randbytes(300_000) for i in range(20)},
                                             "ann.json": text})
    ratio = sum(i.file_size for i in zipfile.ZipFile(z).infolist() if i.filename == "ann.json") / sum(
        i.compress_size for i in zipfile.ZipFile(z).infolist() if i.filename == "ann.json")
    assert 5 < ratio < MAX_ZIP_RATIO
    assert len(extract_zip(z, work / "fine")) == 21


def test_coco_annotations_zip_bomb_is_refused(tmp_path: Path) -> None:
    from bafusion.data.coco import CocoFilter, load_coco

    doc = b'{"images": [], "annotations": [], "categories": []' + b" " * (4 << 20) + b"}"
    z = deflated_zip(tmp_path / "ann.zip", {"annotations/captions_train2017.json": doc})
    with pytest.raises(UserError, match=r"ann\.zip: refusing to extract member 'annotations/captions_train2017\.json'"):
        load_coco(z, CocoFilter())


@pytest.mark.filterwarnings("ignore:Duplicate name")
@pytest.mark.parametrize("names", [["a/x.png", "a/x.png"], ["a/x.png", "a/x.png/y.png"]])
def test_a_member_twice_or_as_file_and_folder_is_named(tmp_path: Path, names: list[str]) -> None:
    # the message named the temporary extraction folder's path (.t.extract-<pid>-<tid>/a/x.png)
    z = tmp_path / "dup.zip"
    with zipfile.ZipFile(z, "w") as zf:
        for n in names:
            zf.writestr(n, b"data")
    with pytest.raises(UserError) as e:
        extract_zip(z, tmp_path / "t")
    msg = str(e.value)
    assert f"member {names[-1]!r} occurs twice, or as a file and as a folder" in msg and ".extract-" not in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.zip"]


def _zip_bytes(payload: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        z.writestr("top/x.bin", payload)
    return buf.getvalue()


def test_without_a_checksum_a_stale_part_is_not_resumed(server: LocalServer, tmp_path: Path) -> None:
    # a .part this call did not write was resumed with Range; a stale or corrupt one, completed
    # and accepted by a zip check that reads only the directory, became the cached archive:
    # its extraction failed and every later run skipped it as already present
    from bafusion.data.acquire import _zip_ok

    data = _zip_bytes(PAYLOAD)
    server.files["a.zip"] = data
    dest = tmp_path / "a.zip"
    (tmp_path / "a.zip.part").write_bytes(b"\0" * 5000)
    r = fetch(server.url("a.zip"), dest, validate=_zip_ok, progress=False, retries=0)
    assert server.requests_for("a.zip") == [None] and r.resumed_from == 0
    assert dest.read_bytes() == data
    assert [p.name for p in extract_zip(dest, tmp_path / "out")] == ["x.bin"]


def test_without_a_checksum_a_failed_transfer_keeps_no_part(server: LocalServer, tmp_path: Path) -> None:
    server.files["big.bin"] = PAYLOAD
    server.truncate["big.bin"] = [50_000]
    with pytest.raises(DownloadError) as e:
        fetch(server.url("big.bin"), tmp_path / "big.bin", retries=0, progress=False)
    assert "resumes" not in str(e.value) and list(tmp_path.iterdir()) == []


VALIDATORS = [("etag", '"v1"', '"v2"'), ("last_modified", "Fri, 04 Dec 2026 10:00:00 GMT", "Fri, 04 Dec 2026 11:00:00 GMT")]


def _fail_once_without_checksum(server: LocalServer, dest: Path, kind: str, value: str) -> None:
    """A first run without a checksum whose transfer breaks after 50,000 bytes, the server
    sending ``kind`` (etag or last_modified) ``value``: the bytes are kept for the next run."""
    server.files["big.bin"] = PAYLOAD
    getattr(server, kind)["big.bin"] = value
    server.truncate["big.bin"] = [50_000]
    with pytest.raises(DownloadError, match="50000 bytes kept in .*big.bin.part, a rerun resumes"):
        fetch(server.url("big.bin"), dest, retries=0, progress=False)
    assert part_path(dest).stat().st_size == 50_000 and not dest.exists()


@pytest.mark.parametrize(("kind", "v1", "v2"), VALIDATORS)
def test_without_a_checksum_a_part_resumes_when_the_server_says_the_file_is_unchanged(
    server: LocalServer, tmp_path: Path, kind: str, v1: str, v2: str
) -> None:
    """Without a checksum a .part left by an earlier run was always fetched anew (a multi-GB
    archive from zero after every broken run); now the first answer's ETag (or Last-Modified)
    and size are kept beside it and the next run resumes with If-Range: a file changed on the
    server since is sent whole instead of completing the old bytes."""
    dest = tmp_path / "big.bin"
    _fail_once_without_checksum(server, dest, kind, v1)
    r = fetch(server.url("big.bin"), dest, retries=0, progress=False)
    assert server.requests_for("big.bin") == [None, "bytes=50000-"]
    assert [v for p, v in server.if_range if p == "big.bin"] == [None, v1]
    assert r.resumed_from == 50_000 and r.bytes == len(PAYLOAD) - 50_000
    assert dest.read_bytes() == PAYLOAD and sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]

    dest.unlink()  # the same, but the file changes on the server between the two runs
    server.requests.clear()
    _fail_once_without_checksum(server, dest, kind, v1)
    new = os.urandom(len(PAYLOAD))
    server.files["big.bin"], getattr(server, kind)["big.bin"] = new, v2
    r = fetch(server.url("big.bin"), dest, retries=0, progress=False)
    assert server.requests_for("big.bin") == [None, "bytes=50000-"]  # answered 200: the whole new file
    assert r.resumed_from == 0 and dest.read_bytes() == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_without_a_checksum_a_server_ignoring_if_range_has_the_changed_file_fetched_anew(
    server: LocalServer, tmp_path: Path
) -> None:
    # it answers the Range with the new file's bytes (206): its ETag tells they are another file's
    dest = tmp_path / "big.bin"
    _fail_once_without_checksum(server, dest, "etag", '"v1"')
    new = os.urandom(len(PAYLOAD))
    server.files["big.bin"], server.etag["big.bin"], server.honour_if_range = new, '"v2"', False
    r = fetch(server.url("big.bin"), dest, retries=1, backoff=0.0, progress=False)
    assert server.requests_for("big.bin") == [None, "bytes=50000-", None]
    assert r.resumed_from == 0 and dest.read_bytes() == new


def _whole_part(server: LocalServer, dest: Path, data: bytes, etag: str) -> None:
    """A .part holding the whole of ``data`` (a run stopped while validating it), its .meta
    naming ``etag`` as the file's."""
    part = part_path(dest)
    part.write_bytes(data)
    meta = {"url": server.url("big.bin"), "etag": etag, "last_modified": None, "size": len(PAYLOAD)}
    part.with_name(part.name + ".meta").write_text(json.dumps(meta))


def test_without_a_checksum_a_whole_part_is_trusted_only_when_the_416_names_the_same_file(
    server: LocalServer, tmp_path: Path
) -> None:
    # a whole part answered 416 was renamed into place unchecked: a file replaced on a server
    # that ignores If-Range by one of the same size left the old bytes "downloaded"
    dest = tmp_path / "big.bin"
    new = os.urandom(len(PAYLOAD))
    server.files["big.bin"], server.etag["big.bin"], server.honour_if_range = new, '"v2"', False
    _whole_part(server, dest, PAYLOAD, '"v1"')
    r = fetch(server.url("big.bin"), dest, retries=0, progress=False)
    assert server.requests_for("big.bin") == [f"bytes={len(PAYLOAD)}-", None]
    assert dest.read_bytes() == new and r.resumed_from == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]
    # the 416 names the file the part's .meta names, and its size: the part is the file
    for on_416, requests in ((True, [f"bytes={len(PAYLOAD)}-"]), (False, [f"bytes={len(PAYLOAD)}-", None])):
        dest.unlink()
        server.requests.clear()
        server.validators_on_416 = on_416
        _whole_part(server, dest, new, '"v2"')
        r = fetch(server.url("big.bin"), dest, retries=0, progress=False)
        assert server.requests_for("big.bin") == requests and dest.read_bytes() == new
    # a part longer than the file (416 with another size) starts over at once, not as a retry
    dest.unlink()
    server.requests.clear()
    server.honour_if_range = True
    _whole_part(server, dest, new + b"junk", '"v2"')
    r = fetch(server.url("big.bin"), dest, retries=0, progress=False)
    assert server.requests_for("big.bin") == [f"bytes={len(PAYLOAD) + 4}-", None] and dest.read_bytes() == new
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_without_a_checksum_a_part_is_kept_only_when_the_server_sent_a_validator(
    server: LocalServer, tmp_path: Path
) -> None:
    server.files["big.bin"] = PAYLOAD
    server.etag["big.bin"] = 'W/"weak"'  # a weak ETag cannot be used with If-Range
    server.truncate["big.bin"] = [50_000]
    with pytest.raises(DownloadError) as e:
        fetch(server.url("big.bin"), tmp_path / "big.bin", retries=0, progress=False)
    assert "resumes" not in str(e.value) and list(tmp_path.iterdir()) == []


def test_without_a_checksum_a_part_fetched_from_another_url_is_not_resumed(server: LocalServer, tmp_path: Path) -> None:
    # its validator is the other server's: nothing tells the bytes are this URL's file
    dest = tmp_path / "big.bin"
    _fail_once_without_checksum(server, dest, "etag", '"v1"')
    server.files["mirror/big.bin"], server.etag["mirror/big.bin"] = PAYLOAD, '"v1"'
    r = fetch(server.url("mirror/big.bin"), dest, retries=0, progress=False)
    assert server.requests_for("mirror/big.bin") == [None] and r.resumed_from == 0
    assert dest.read_bytes() == PAYLOAD and sorted(p.name for p in tmp_path.iterdir()) == ["big.bin"]


def test_without_a_checksum_a_resumed_part_the_validator_rejects_is_fetched_once_more(
    server: LocalServer, tmp_path: Path
) -> None:
    # kept bytes damaged on disk between the runs: the resumed zip fails its CRC test, and the
    # file is fetched anew rather than reported broken
    from bafusion.data.acquire import _zip_ok

    data = _zip_bytes(PAYLOAD)
    server.files["a.zip"], server.etag["a.zip"], server.truncate["a.zip"] = data, '"z"', [200_000]
    dest = tmp_path / "a.zip"
    with pytest.raises(DownloadError, match="rerun resumes"):
        fetch(server.url("a.zip"), dest, validate=_zip_ok, retries=0, progress=False)
    part = part_path(dest)
    damaged = bytearray(part.read_bytes())
    damaged[1000] ^= 0xFF
    part.write_bytes(bytes(damaged))
    r = fetch(server.url("a.zip"), dest, validate=_zip_ok, retries=0, progress=False)
    assert server.requests_for("a.zip") == [None, "bytes=200000-", None]
    assert r.resumed_from == 0 and dest.read_bytes() == data
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip"]


def test_a_zip_whose_members_are_damaged_is_rejected_and_fetched_again(server: LocalServer, tmp_path: Path) -> None:
    from bafusion.data.acquire import _zip_ok

    data = _zip_bytes(PAYLOAD)
    bad = bytearray(data)
    bad[1000] ^= 0xFF  # inside the member's bytes: the directory still reads
    zipfile.ZipFile(io.BytesIO(bytes(bad))).infolist()
    dest = tmp_path / "a.zip"
    dest.write_bytes(bytes(bad))  # cached by an earlier run
    with pytest.raises(UserError, match=r"corrupt zip archive.*'top/x\.bin'"):
        _zip_ok(dest)
    with pytest.raises(UserError, match=rf"{dest}: corrupt zip archive .*delete {dest} and run again"):
        extract_zip(dest, tmp_path / "out")
    server.files["a.zip"] = data
    r = fetch(server.url("a.zip"), dest, validate=_zip_ok, progress=False, retries=0)
    assert r.status == "downloaded" and dest.read_bytes() == data
    server.files["a.zip"] = bytes(bad)  # a server that serves it damaged: never cached
    dest.unlink()
    with pytest.raises(DownloadError, match="rejected: corrupt zip archive"):
        fetch(server.url("a.zip"), dest, validate=_zip_ok, progress=False, retries=0)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("checksum", [True, False])
@pytest.mark.parametrize("scheme", ["http", "file"])
def test_a_part_that_is_a_symbolic_link_is_not_written_through(
    server: LocalServer, tmp_path: Path, scheme: str, checksum: bool
) -> None:
    # open(part, "wb") and shutil.copyfile followed a link at <dest>.part: its target was
    # overwritten, and the link renamed into place made the cached file a link to it
    server.files["a.bin"] = PAYLOAD
    src = tmp_path / "src" / "a.bin"
    src.parent.mkdir()
    src.write_bytes(PAYLOAD)
    victim = tmp_path / "victim.txt"
    victim.write_text("not yours")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "a.bin.part").symlink_to(victim)
    url = server.url("a.bin") if scheme == "http" else src.as_uri()
    fetch(url, cache / "a.bin", checksum=sha256(PAYLOAD) if checksum else None, progress=False, retries=0)
    assert victim.read_text() == "not yours"
    assert not (cache / "a.bin").is_symlink() and (cache / "a.bin").read_bytes() == PAYLOAD
    assert [p.name for p in cache.iterdir()] == ["a.bin"]


class _Misbehaving:
    """A 127.0.0.1 server with bodies no honest mirror sends: ``/endless`` (zeros, no
    Content-Length, until the client hangs up), ``/drip`` (one byte every 0.2 s), ``/late``
    (999 of 1000 bytes after 0.6 s, the last 0.6 s later),
    ``/announce`` (a Content-Length of 10 MB for a short body), and redirects ``/to/<url>``
    (302 to ``<url>``)."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                owner.hits.append(self.path)
                try:
                    if self.path == "/endless":
                        self.send_response(200)
                        self.end_headers()
                        while True:
                            self.wfile.write(b"\0" * 65536)
                    elif self.path == "/drip":
                        self.send_response(200)
                        self.send_header("Content-Length", "1000")
                        self.end_headers()
                        for _ in range(1000):
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.2)
                    elif self.path == "/late":
                        self.send_response(200)
                        self.send_header("Content-Length", "1000")
                        self.end_headers()
                        time.sleep(0.6)
                        self.wfile.write(b"a" * 999)
                        self.wfile.flush()
                        time.sleep(0.6)
                        self.wfile.write(b"b")
                    elif self.path == "/announce":
                        self.send_response(200)
                        self.send_header("Content-Length", str(10**7))
                        self.end_headers()
                        self.wfile.write(b"y" * 100)
                    elif self.path.startswith("/to/"):
                        self.send_response(302)
                        self.send_header("Location", self.path[len("/to/"):])
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                    elif self.path == "/good":
                        self.send_response(200)
                        self.send_header("Content-Length", "4")
                        self.end_headers()
                        self.wfile.write(b"good")
                    else:
                        self.send_error(404)
                except (BrokenPipeError, ConnectionResetError):
                    pass
                self.close_connection = True

        self.httpd = _QuietServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def bad_server() -> Iterator[_Misbehaving]:
    s = _Misbehaving()
    yield s
    s.close()


def _nothing_left(dest: Path) -> bool:
    return not dest.exists() and not part_path(dest).exists()


def test_an_endless_body_is_cut_off_at_max_bytes(bad_server: _Misbehaving, tmp_path: Path) -> None:
    """It grew to gigabytes: the read went on while the server sent, whatever the checksum."""
    dest = tmp_path / "e.bin"
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"/endless: the server sent more than the limit max_bytes \(200000 bytes\)"):
        fetch(bad_server.url("endless"), dest, checksum=sha256(b"x"), max_bytes=200_000, retries=2, backoff=0,
              progress=False)
    assert time.monotonic() - t0 < 10 and _nothing_left(dest)
    assert len(bad_server.hits) == 1  # final: not retried


def test_a_body_longer_than_the_expected_size_is_cut_off(bad_server: _Misbehaving, tmp_path: Path) -> None:
    dest = tmp_path / "e.bin"
    with pytest.raises(DownloadError, match=r"more than the expected size \(5000 bytes\)"):
        fetch(bad_server.url("endless"), dest, size=5000, retries=0, progress=False)
    assert _nothing_left(dest)
    jobs = [FetchJob(bad_server.url("endless"), tmp_path / "m.bin", None, 3000)]
    s = fetch_many(jobs, retries=0, progress=False)
    assert len(s.failed) == 1 and "more than the expected size (3000 bytes)" in s.failed[0][1]
    assert _nothing_left(tmp_path / "m.bin")


def test_an_announced_length_beyond_the_bound_is_refused_before_reading(bad_server: _Misbehaving, tmp_path: Path) -> None:
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match=r"announces 10000000 bytes, more than the limit max_bytes \(1000000 bytes\)"):
        fetch(bad_server.url("announce"), dest, max_bytes=1_000_000, retries=0, progress=False)
    assert _nothing_left(dest)


def test_a_dripping_server_is_stopped_as_too_slow(bad_server: _Misbehaving, tmp_path: Path) -> None:
    """One byte every 0.2 s never hit the per-read timeout: 1,000 bytes took 200 s (a 12 kB
    file 100 minutes); now an attempt must average min_rate after `timeout` s of grace."""
    dest = tmp_path / "d.bin"
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"/drip: failed after 1 attempts: too slow: \d+ bytes in [\d.]+ s, below the "
                                            r"minimum rate of 100 B/s after 0.5 s \(min_rate\)"):
        fetch(bad_server.url("drip"), dest, timeout=0.5, min_rate=100, retries=0, progress=False)
    assert time.monotonic() - t0 < 5
    assert not dest.exists()


def test_the_chunk_that_completes_the_body_is_not_too_slow(bad_server: _Misbehaving, tmp_path: Path) -> None:
    """The rate was checked after every chunk, the last one too: a 1000-byte body whose last
    byte came after 1.2 s (below min_rate past the 1 s grace) failed "too slow" with the whole
    body received, and the retry asked for bytes=1000-."""
    dest = tmp_path / "l.bin"
    fetch(bad_server.url("late"), dest, timeout=1.0, min_rate=100_000, retries=0, progress=False)
    assert dest.read_bytes() == b"a" * 999 + b"b"
    assert bad_server.hits == ["/late"]


def test_a_redirect_to_another_scheme_is_refused(bad_server: _Misbehaving, tmp_path: Path) -> None:
    """A redirect to ftp:// connected to that port, although ftp:// given directly is refused."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    ftp = f"ftp://127.0.0.1:{listener.getsockname()[1]}/x.zip"
    dest = tmp_path / "r.bin"
    try:
        with pytest.raises(DownloadError, match=r"/to/ftp://.*: refusing the redirect \(HTTP 302\) to ftp://127.0.0.1:\d+/x.zip: "
                                                r"it changes the scheme from http to ftp"):
            fetch(bad_server.url("to/" + ftp), dest, retries=2, backoff=0, progress=False)
        with pytest.raises(OSError):  # nothing connected to the ftp port
            listener.accept()
    finally:
        listener.close()
    assert _nothing_left(dest) and len(bad_server.hits) == 1
    # a redirect on the same scheme is still followed
    r = fetch(bad_server.url("to/" + bad_server.url("good")), dest, retries=0, progress=False)
    assert r.status == "downloaded" and dest.read_bytes() == b"good"
    # an https download sent to plain http is a downgrade, refused; http -> https is followed
    from bafusion.data.download import _SameSchemeRedirects

    handler = _SameSchemeRedirects()
    with pytest.raises(DownloadError, match=r"https://example.invalid/a: refusing the redirect \(HTTP 301\) to "
                                            r"http://example.invalid/a: it changes the scheme from https to http"):
        handler.redirect_request(urllib.request.Request("https://example.invalid/a"), io.BytesIO(), 301, "Moved", {},
                                 "http://example.invalid/a")
    up = handler.redirect_request(urllib.request.Request("http://example.invalid/a"), io.BytesIO(), 301, "Moved", {},
                                  "https://example.invalid/a")
    assert up is not None and up.full_url == "https://example.invalid/a"


def test_the_retry_wait_stays_at_its_bound_however_many_attempts(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """``backoff * 2**attempt`` was computed with Python's integer power: from the 1025th
    attempt (``download.net.retries`` has no bound) it raised OverflowError ("int too large to
    convert to float"), an internal error instead of the download's own. The wait now stays at
    MAX_BACKOFF, and the failure after the last attempt is the usual DownloadError."""
    from bafusion.data import download

    def fail(*args: object, **kwargs: object) -> None:
        raise download._Retryable("connection reset")

    waits: list[float] = []
    monkeypatch.setattr(download, "_attempt", fail)
    monkeypatch.setattr(download, "_wait_unless_stopped", waits.append)
    with pytest.raises(DownloadError, match="failed after 1201 attempts: connection reset"):
        fetch("http://127.0.0.1:9/a.bin", tmp_path / "a.bin", retries=1200, backoff=1.0, progress=False)
    assert len(waits) == 1200 and waits[:8] == [1, 2, 4, 8, 16, 32, 64, 120]
    assert set(waits[7:]) == {download.MAX_BACKOFF}


def test_extract_zip_replaces_an_earlier_folder_that_cannot_be_renamed(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A target folder of an overlay's lower layer (a container image's) cannot be renamed:
    the swap and the rename away both fail with EXDEV (simulated here), which extract_zip
    raised after extracting. It is removed in place and the new folder renamed in, as
    atomic_dir does (:func:`bafusion.atomic.replace_folder`); nothing is left beside it."""
    target = tmp_path / "input"
    extract_zip(make_zip(tmp_path / "a.zip", {"GT01.png": b"1"}), target)
    overlay_lower_layer(monkeypatch, target)
    extract_zip(make_zip(tmp_path / "b.zip", {"GT02.png": b"2"}), target)
    assert sorted(p.name for p in target.iterdir()) == ["GT02.png"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.zip", "b.zip", "input"]


class _Stalling:
    """A server on 127.0.0.1 that accepts, reads the request, sends ``answer`` (nothing, or the
    headers of a 1000-byte file and its first 10 bytes) and then stalls, the connection open,
    until closed."""

    def __init__(self, answer: bytes) -> None:
        import socket

        self.answer = answer
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.requests = 0
        self.held: list[object] = []
        self.done = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.held.append(conn)
            with contextlib.suppress(OSError):
                data = b""
                while b"\r\n\r\n" not in data:
                    got = conn.recv(4096)
                    if not got:
                        break
                    data += got
                self.requests += 1
                conn.sendall(self.answer)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}/{path}"

    def close(self) -> None:
        self.done.set()
        self.listener.close()
        for conn in self.held:
            with contextlib.suppress(OSError):
                conn.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("stalls", ["before the headers", "in the body"])
def test_a_stop_ends_a_stalled_download_of_fetch_many_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stalls: str
) -> None:
    """Ctrl-C (or SIGTERM) while a download of fetch_many waited on a server that accepted and
    then sent nothing: its worker thread, which the signal does not interrupt, waited in the
    socket's read for the whole ``timeout`` (60 s by default; --timeout up to a day), and the
    pool's exit waited for it. The stop now shuts its connection down: the command ends at
    once, nothing renamed into place."""
    import signal

    import bafusion.data.download as download
    from bafusion import atomic

    timeout = 60.0
    body = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10
    server = _Stalling(b"" if stalls == "before the headers" else body)
    good = LocalServer()
    good.__enter__()
    good.files["f0"] = PAYLOAD
    jobs = [FetchJob(good.url("f0"), tmp_path / "f0", sha256(PAYLOAD)), FetchJob(server.url("f1"), tmp_path / "f1")]
    real = download.as_completed
    stopped_at: list[float] = []

    def stopped_in_the_stall(fs):  # type: ignore[no-untyped-def]
        for fut in real(fs):
            yield fut
            deadline = time.monotonic() + 20
            part = part_path(tmp_path / "f1")
            while time.monotonic() < deadline and not (
                    server.requests and (stalls == "before the headers" or (part.exists() and part.stat().st_size))):
                time.sleep(0.01)
            time.sleep(0.3)  # in the read
            stopped_at.append(time.monotonic())
            atomic.request_stop(signal.SIGINT)  # as the command's Ctrl-C handler does, then raises
            raise KeyboardInterrupt

    monkeypatch.setattr(download, "as_completed", stopped_in_the_stall)
    try:
        with pytest.raises(KeyboardInterrupt):
            fetch_many(jobs, workers=1, retries=3, timeout=timeout, progress=False)
        took = time.monotonic() - stopped_at[0]
    finally:
        atomic.clear_stop()
        server.close()
        good.__exit__(None, None, None)
    assert server.requests == 1
    assert took < timeout / 4, f"the stop took {took:.1f} s, the timeout is {timeout:g} s"
    assert (tmp_path / "f0").read_bytes() == PAYLOAD and not (tmp_path / "f1").exists()


def test_a_stopped_fetch_keeps_its_part_whatever_its_shut_connection_raised(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop shuts the connections of fetch_many down (_abort_connections); an https
    connection's read then fails with an ssl.SSLError, which _attempt does not catch: fetch
    took it for a final error and deleted the bytes kept for the rerun. A stop requested keeps
    them, whatever the attempt raised."""
    import signal
    import ssl

    import bafusion.data.download as download
    from bafusion import atomic

    server.files["f"] = PAYLOAD
    dest = tmp_path / "f"
    part_path(dest).write_bytes(PAYLOAD[:1000])  # an earlier run's bytes (a checksum: resumable)

    def shut_down(*args: object, **kwargs: object) -> tuple[int, int]:
        atomic.request_stop(signal.SIGTERM)  # the command's handler, while this worker reads
        raise ssl.SSLEOFError(8, "EOF occurred in violation of protocol")

    monkeypatch.setattr(download, "_attempt", shut_down)
    try:
        # the stop is what fetch raises (the command says "terminated"), not the error of the
        # connection it shut down (an ssl.SSLError came out: a network error, or a bug, was said)
        with pytest.raises(SystemExit) as stopped:
            fetch(server.url("f"), dest, checksum=sha256(PAYLOAD), retries=0, progress=False)
    finally:
        atomic.clear_stop()
    assert stopped.value.code == 143
    assert isinstance(stopped.value.__context__, ssl.SSLEOFError)  # kept for a traceback
    assert part_path(dest).read_bytes() == PAYLOAD[:1000] and not dest.exists()


def test_a_full_disk_after_a_stop_reports_the_stop_and_deletes_the_part(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk filled up as the command was stopped: fetch raised the disk's error (a
    _PartWriteError naming the .part), not the stop, and kept the .part for a rerun, whose
    bytes keep the disk full (without a stop a full disk deletes it: the rerun fails on it
    again). The stop is raised; the part is deleted as after any full disk."""
    import errno
    import signal

    import bafusion.data.download as download
    from bafusion import atomic

    server.files["f"] = PAYLOAD
    dest = tmp_path / "f"
    real_write = download._write_part

    def full_after_the_stop(f, chunk, part):  # type: ignore[no-untyped-def]
        real_write(f, chunk[:100], part)  # some bytes on the disk, then it is full
        atomic.request_stop(signal.SIGINT)
        raise download._PartWriteError(errno.ENOSPC, "No space left on device", os.fspath(part))

    monkeypatch.setattr(download, "_write_part", full_after_the_stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            fetch(server.url("f"), dest, checksum=sha256(PAYLOAD), retries=2, progress=False)
    finally:
        atomic.clear_stop()
    assert not part_path(dest).exists() and not dest.exists()
    assert len(server.requests) == 1


def test_a_stop_during_the_connect_shuts_the_connection_as_it_opens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stop came while a worker of fetch_many was still connecting: its socket, not yet
    known, was not shut down by _abort_connections. It is shut down as its connect ends, so its
    request fails at once instead of waiting on a server that sends nothing for ``timeout``."""
    import signal
    import socket

    import bafusion.data.download as download
    from bafusion import atomic

    timeout = 30.0
    server = _Stalling(b"")
    real_create = download._create_connection
    stopped_at: list[float] = []

    def stopped_while_connecting(*args, **kwargs):  # type: ignore[no-untyped-def]
        sock = real_create(*args, **kwargs)
        # the main thread's stop, before this socket is known: the handler's record, then the
        # shutdown of the connections known (fetch_many's _cancelled_when_stopped)
        stopped_at.append(time.monotonic())
        atomic.request_stop(signal.SIGTERM)
        download._abort_connections()
        return sock

    monkeypatch.setattr(download, "_create_connection", stopped_while_connecting)
    try:
        with pytest.raises(SystemExit):
            fetch_many([FetchJob(server.url("f1"), tmp_path / "f1")], workers=1, retries=3, timeout=timeout,
                       progress=False)
        took = time.monotonic() - stopped_at[0]
    finally:
        atomic.clear_stop()
        server.close()
    assert len(stopped_at) == 1  # no retry
    assert took < timeout / 4, f"the stop took {took:.1f} s, the timeout is {timeout:g} s"
    assert not (tmp_path / "f1").exists()


def test_a_stop_ends_a_download_stalled_in_its_tls_handshake_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An https server that accepts the connection and never answers the TLS handshake: the
    connection's socket became known to _abort_connections only once the handshake was done, so
    a stop waited for the whole ``timeout``. Its socket is known as soon as it is connected."""
    import signal

    import bafusion.data.download as download
    from bafusion import atomic

    timeout = 30.0
    server = _Stalling(b"")  # reads the ClientHello, waiting for a blank line it never has
    stopped_at: list[float] = []

    def stop_in_the_handshake() -> None:  # the main thread's stop (the handler, then fetch_many's)
        deadline = time.monotonic() + 20
        while not server.held and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # in the handshake
        stopped_at.append(time.monotonic())
        atomic.request_stop(signal.SIGINT)
        download._abort_connections()

    stopper = threading.Thread(target=stop_in_the_handshake)
    stopper.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            fetch_many([FetchJob(server.url("f1").replace("http:", "https:"), tmp_path / "f1")], workers=1,
                       retries=3, timeout=timeout, progress=False)
        took = time.monotonic() - stopped_at[0]
    finally:
        stopper.join()
        atomic.clear_stop()
        server.close()
    assert len(server.held) == 1  # no retry
    assert took < timeout / 4, f"the stop took {took:.1f} s, the timeout is {timeout:g} s"
    assert not (tmp_path / "f1").exists()


def _self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and its key), made with the ``cryptography``
    package or else the ``openssl`` command; the test is skipped where neither is there."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        import shutil
        import subprocess

        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl command to make a certificate")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                        "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                        "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
        return cert, key
    import ipaddress

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(private.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return cert, key


class _TLSServer:
    """An https server on 127.0.0.1 with a self-signed certificate, serving ``body``. The first
    connections, as many as ``damaged``, answer the request with a TLS record that does not
    decrypt (bytes damaged on the way), so the client's read of the headers ends in an
    ``ssl.SSLError`` (bad record MAC). ``handshakes`` counts the connections that completed a
    handshake, ``connections`` all that were accepted."""

    def __init__(self, folder: Path, body: bytes, damaged: int = 0, client_cert: bool = False) -> None:
        import socket
        import ssl

        self.cert, key = _self_signed_cert(folder)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(self.cert, key)
        self.names: list[str | None] = []  # the host name each client sent (SNI)
        self.context.sni_callback = lambda _sock, name, _context: self.names.append(name)  # type: ignore[func-returns-value]
        if client_cert:  # a client certificate wanted: TLS 1.3 says so by an alert after the client's handshake
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(self.cert)
        self.body, self.damaged = body, damaged
        self.connections = self.handshakes = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # its accept sees close()'s done (a closed socket does not end it)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        import socket
        import ssl

        while not self.done.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            raw.settimeout(10)
            conn = self.context.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
            try:
                conn.do_handshake()
            except (OSError, ssl.SSLError):  # a client that refused the certificate, or that we refused
                time.sleep(0.3)  # our alert read by the client before the close (its request unread: a reset)
                conn.close()
                continue
            self.handshakes += 1
            with contextlib.suppress(OSError):
                data = b""
                while b"\r\n\r\n" not in data:
                    got = conn.recv(4096)
                    if not got:
                        break
                    data += got
                if self.damaged:
                    self.damaged -= 1
                    # a record damaged on the way (a flaky link, a middlebox): its MAC fails
                    socket.socket.sendall(conn, b"\x17\x03\x03\x00\x20" + bytes(range(32)))
                    time.sleep(0.2)
                    conn.close()
                    continue
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(self.body)
                             + self.body)
                conn.unwrap()
            conn.close()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.listener.getsockname()[1]}/{path}"

    def close(self) -> None:
        self.done.set()
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[Path], None]]:
    """Make https connections trust the certificate given (as a system's CA store would)."""
    import ssl

    def trust(cert: Path) -> None:
        monkeypatch.setattr(ssl, "_create_default_https_context", lambda: ssl.create_default_context(cafile=str(cert)))

    yield trust


def test_a_tls_record_damaged_before_the_headers_is_retried(tmp_path: Path, trusting) -> None:  # type: ignore[no-untyped-def]
    """A TLS record that does not decrypt (damaged on the way) while the headers were awaited:
    its ssl.SSLError came out of fetch as it was, not retried, and the .part of an earlier run
    was deleted, where the same in the body, or a plain http connection's trouble, is retried
    (a network error). It is retried now."""
    server = _TLSServer(tmp_path, PAYLOAD, damaged=1)
    trusting(server.cert)
    dest = tmp_path / "f"
    try:
        res = fetch(server.url("f"), dest, checksum=sha256(PAYLOAD), retries=2, backoff=0, progress=False)
    finally:
        server.close()
    assert res.status == "downloaded" and dest.read_bytes() == PAYLOAD
    assert server.handshakes == 2


def test_a_certificate_that_fails_verification_is_not_retried(tmp_path: Path) -> None:
    """A certificate the client does not trust (self-signed here; a wrong host name, an expired
    one) fails again on every attempt: it was retried as a network error, ``retries`` times
    with their waits (15 s by default), then said as "failed after 5 attempts". It fails at
    once now, naming the certificate's trouble."""
    server = _TLSServer(tmp_path, PAYLOAD)
    dest = tmp_path / "f"
    try:
        with pytest.raises(DownloadError, match=r"TLS error, not retried.*certificate verify failed") as failed:
            fetch(server.url("f"), dest, retries=3, backoff=0, progress=False)
    finally:
        server.close()
    assert "attempts" not in str(failed.value)
    assert server.connections == 1 and server.handshakes == 0
    assert _nothing_left(dest)


def test_https_to_a_plain_http_server_is_not_retried(server: LocalServer, tmp_path: Path) -> None:
    """An https URL whose port serves plain http: the handshake fails ("wrong version number")
    on every attempt; it was retried as a network error. It fails at once now."""
    server.files["f"] = PAYLOAD
    with pytest.raises(DownloadError, match=r"TLS error, not retried") as failed:
        fetch(server.url("f").replace("http:", "https:"), tmp_path / "f", retries=3, backoff=0, progress=False)
    assert "attempts" not in str(failed.value)
    assert _nothing_left(tmp_path / "f")


class _Unanswered:
    """A 127.0.0.1 port whose TCP handshake is never answered, as a host behind a firewall that
    drops it: a listener of backlog 0 that accepts nothing, its queue filled by one connection,
    so the SYN of the next is dropped. Skips the test where a probe's connect is answered."""

    def __init__(self) -> None:
        import socket

        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(0)
        self.port = self.listener.getsockname()[1]
        self.fill = [socket.create_connection(("127.0.0.1", self.port), timeout=5)]
        probe = socket.socket()
        probe.settimeout(0.5)
        try:
            probe.connect(("127.0.0.1", self.port))
        except TimeoutError:
            pass
        else:
            self.close()
            pytest.skip("a full backlog does not drop a connect here")
        finally:
            probe.close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def close(self) -> None:
        for sock in self.fill:
            sock.close()
        self.listener.close()


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_a_stop_ends_a_connect_that_is_never_answered_at_once(tmp_path: Path, scheme: str) -> None:
    """A server whose host drops the TCP handshake: a worker of fetch_many waited in the connect
    for the whole ``timeout`` after a stop (its socket, not yet connected, was beyond
    _abort_connections, and the signal does not interrupt a worker thread). The stop ends the
    connect now."""
    import signal

    import bafusion.data.download as download
    from bafusion import atomic

    timeout = 12.0
    server = _Unanswered()
    stopped_at: list[float] = []

    def stop_in_the_connect() -> None:  # the main thread's stop (the handler, then fetch_many's)
        time.sleep(0.5)
        stopped_at.append(time.monotonic())
        atomic.request_stop(signal.SIGTERM)
        download._abort_connections()

    stopper = threading.Thread(target=stop_in_the_connect)
    stopper.start()
    try:
        with pytest.raises(SystemExit):
            fetch_many([FetchJob(server.url("f1").replace("http:", f"{scheme}:"), tmp_path / "f1")], workers=1,
                       retries=3, timeout=timeout, progress=False)
        took = time.monotonic() - stopped_at[0]
    finally:
        stopper.join()
        atomic.clear_stop()
        server.close()
    assert took < timeout / 4, f"the stop took {took:.1f} s, the timeout is {timeout:g} s"
    assert _nothing_left(tmp_path / "f1")


def test_a_connect_that_is_never_answered_still_times_out(tmp_path: Path) -> None:
    """Without a stop, the connect made so that a stop ends it keeps its ``timeout``: retried,
    then said as a timeout."""
    server = _Unanswered()
    t0 = time.monotonic()
    try:
        with pytest.raises(DownloadError, match=r"failed after 2 attempts: URLError: timed out"):
            fetch(server.url("f"), tmp_path / "f", retries=1, backoff=0, timeout=0.5, progress=False)
    finally:
        server.close()
    assert 0.9 < time.monotonic() - t0 < 5
    assert _nothing_left(tmp_path / "f")


def test_a_refused_connect_is_a_network_error_at_once(tmp_path: Path) -> None:
    """A port nothing listens on: the connect is refused at once (not after ``timeout``), told by
    its own error, and retried like other network errors."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match=r"failed after 2 attempts: URLError: .*Connection refused"):
        fetch(f"http://127.0.0.1:{port}/f", tmp_path / "f", retries=1, backoff=0, timeout=30, progress=False)
    assert time.monotonic() - t0 < 5


def test_a_certificate_for_another_host_is_refused_and_the_host_name_sent(tmp_path: Path, trusting) -> None:  # type: ignore[no-untyped-def]
    """The TLS socket's handshake is made by _KnownTLS (known to the stop before it): the host
    name is still sent (SNI) and checked against the certificate. A certificate trusted, but
    for 127.0.0.1, fails for ``localhost``, at once (not retried); for 127.0.0.1 it is fetched."""
    import socket

    if "127.0.0.1" not in {a[4][0] for a in socket.getaddrinfo("localhost", 80, 0, socket.SOCK_STREAM)}:
        pytest.skip("localhost is not 127.0.0.1 here")
    server = _TLSServer(tmp_path, PAYLOAD)
    trusting(server.cert)
    try:
        with pytest.raises(DownloadError, match=r"TLS error, not retried.*[Hh]ostname mismatch") as failed:
            fetch(server.url("f").replace("127.0.0.1", "localhost"), tmp_path / "f", retries=3, backoff=0,
                  progress=False)
        assert "attempts" not in str(failed.value) and _nothing_left(tmp_path / "f")
        assert server.connections == 1 and server.names == ["localhost"]
        fetch(server.url("g"), tmp_path / "g", retries=0, progress=False)
    finally:
        server.close()
    assert (tmp_path / "g").read_bytes() == PAYLOAD and server.handshakes == 1


def test_a_servers_alert_after_the_handshake_is_not_retried(tmp_path: Path, trusting) -> None:  # type: ignore[no-untyped-def]
    """A server that wants a client certificate (TLS 1.3: its alert comes after the client's
    handshake, in the read of the headers) refuses every attempt: an alert of the server fails
    at once, where another TLS error of that read (a damaged record) is retried."""
    import ssl

    server = _TLSServer(tmp_path, PAYLOAD, client_cert=True)
    trusting(server.cert)
    try:
        with pytest.raises(DownloadError, match=r"TLS error, not retried.*ALERT") as failed:
            fetch(server.url("f"), tmp_path / "f", retries=3, backoff=0, progress=False)
    finally:
        server.close()
    if ssl.HAS_TLSv1_3:
        assert isinstance(failed.value.__cause__, ssl.SSLError) and "ALERT_CERTIFICATE_REQUIRED" in str(failed.value)
    assert "attempts" not in str(failed.value) and server.connections == 1
    assert _nothing_left(tmp_path / "f")


def test_each_address_of_the_host_is_tried_in_turn_with_its_own_timeout(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connect that a stop ends (_create_connection) stands in for socket.create_connection:
    a host of several addresses (IPv6 and IPv4, several servers) is tried address by address,
    each with the whole ``timeout``, the first that connects used; where none does, the first
    error is raised."""
    import socket

    server.files["f"] = PAYLOAD
    port = int(server.url("f").split(":")[2].split("/")[0])
    unanswered = _Unanswered()
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        refused = free.getsockname()[1]
    real = socket.getaddrinfo
    answers: list[int] = []

    def several(host: str, _port: int, *args: object, **kwargs: object) -> list:  # type: ignore[type-arg]
        assert host == "several.test"
        return [a for p in answers for a in real("127.0.0.1", p, *args, **kwargs)]  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", several)
    url = f"http://several.test:{port}/f"
    try:
        answers[:] = [refused, unanswered.port, port]  # refused at once, then silent for the timeout, then the server
        t0 = time.monotonic()
        assert fetch(url, tmp_path / "f", retries=0, timeout=0.5, progress=False).status == "downloaded"
        assert 0.45 < time.monotonic() - t0 < 5 and (tmp_path / "f").read_bytes() == PAYLOAD
        answers[:] = [refused, unanswered.port]
        with pytest.raises(DownloadError, match=r"Connection refused"):
            fetch(url, tmp_path / "g", retries=0, timeout=0.5, progress=False)
        answers[:] = []
        with pytest.raises(DownloadError, match=r"returns no address"):
            fetch(url, tmp_path / "h", retries=0, timeout=0.5, progress=False)
    finally:
        unanswered.close()
    assert _nothing_left(tmp_path / "g") and _nothing_left(tmp_path / "h")


def test_the_connect_binds_the_source_address(server: LocalServer) -> None:
    """socket.create_connection's ``source_address`` (http.client's) is bound before the connect."""
    import bafusion.data.download as download

    import socket

    port = int(server.url("f").split(":")[2].split("/")[0])
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        source = free.getsockname()
    with download._create_connection(("127.0.0.1", port), 5, source) as sock:
        assert sock.getsockname() == source and sock.getpeername()[1] == port and sock.gettimeout() == 5


@pytest.mark.parametrize(("reason", "handshake", "retried"), [
    ("TLSV13_ALERT_CERTIFICATE_REQUIRED", False, False),  # a refusal: another attempt meets it again
    ("TLSV1_ALERT_PROTOCOL_VERSION", True, False),
    ("SSLV3_ALERT_HANDSHAKE_FAILURE", True, False),
    ("SSLV3_ALERT_BAD_RECORD_MAC", False, True),  # the server could not decrypt our record: damaged on the way
    ("SSLV3_ALERT_BAD_RECORD_MAC", True, True),
    ("TLSV1_ALERT_DECRYPTION_FAILED", False, True),
    ("TLSV1_ALERT_RECORD_OVERFLOW", False, True),
    ("TLSV1_ALERT_INTERNAL_ERROR", True, True),  # the server's own trouble (overloaded)
    ("DECRYPTION_FAILED_OR_BAD_RECORD_MAC", False, True),  # the same damage found here
    ("WRONG_VERSION_NUMBER", True, False),  # plain http on the port
])
def test_the_tls_retry_policy_of_a_servers_alerts(reason: str, handshake: bool, retried: bool) -> None:
    """A server's alert is a refusal (not retried), but for those of a record damaged on the way
    and of the server's internal error, retried as the same damage found by the client is: all
    alerts were final."""
    import ssl

    from bafusion.data.download import _transient_tls

    error = ssl.SSLError(1, f"[SSL: {reason}] ({reason.lower()})")
    error.reason = reason  # as OpenSSL's errors carry it
    assert _transient_tls(error, handshake=handshake) is retried
