"""Fetching files safely: HTTP(S) or ``file://`` downloads with Range resume, retries with
exponential backoff, checksum verification, a thread pool for many small files, and zip
extraction that refuses members landing outside the target.

Guarantees:

- A download is written to ``<dest>.part`` and renamed to ``<dest>`` only once it is
  complete and its checksum (when one is given) matches. A checksum mismatch deletes the
  part and raises :class:`DownloadError` naming the URL, the expected and the actual digest.
- An interrupted transfer (connection dropped, short body, timeout) is retried and resumes
  from the bytes already on disk with an HTTP ``Range`` request; a server that ignores
  ``Range`` (answers 200) makes it start over. The first answer's validator (a strong
  ``ETag``, else ``Last-Modified``), size and URL are kept in ``<dest>.part.meta`` and sent
  with every resumed request as ``If-Range``: a file changed on the server since is sent
  whole (200) and fetched from zero, and so is a range answered with another validator or
  size (a server that ignores ``If-Range``). A ``.part`` already whole (answered 416) is
  kept, without a checksum, only when the 416 carries that validator and the part's size;
  else it is fetched from zero. A ``.part`` left by a killed process, or by a
  transfer that still failed after the last retry, is resumed the same way by the next call:
  with a checksum always (a resumed file whose checksum does not match is fetched once more
  from zero); without one only when its ``.meta`` holds a validator for the same URL (a
  resumed file that ``validate`` rejects, such as a zip damaged on disk, is fetched once more
  from zero), else nothing could tell a stale ``.part`` from a good one: it is deleted and
  the file fetched from zero (and none is kept for a next call when the server sends no
  validator). A ``.part`` that is a symbolic link is removed, never written through.
- A download never grows past a bound: the expected ``size`` when the caller knows it (a
  manifest entry, a published archive), else ``max_bytes`` (:data:`MAX_DOWNLOAD_BYTES`,
  4 GiB, by default). A server that announces more (``Content-Length``/``Content-Range``) or
  sends more is refused at once with a :class:`DownloadError` naming the URL and the bound;
  the part is deleted and nothing is written under ``dest``. And it never takes forever: an
  attempt whose average rate, after a first ``timeout`` seconds of grace, falls below
  ``min_rate`` (:data:`MIN_RATE`, 1 KiB/s) is stopped as too slow (retried like a dropped
  connection), so one attempt takes at most ``timeout + size / min_rate`` seconds (with the
  ``timeout`` of one read on top); ``timeout`` alone bounds only one read.
- A stop of the command (Ctrl-C, SIGTERM: :func:`bafusion.atomic.request_stop`) ends the
  downloads of :func:`fetch_many` at once: the queued ones are cancelled, and the connections
  of the running ones shut down, so a read waiting on a server that stopped sending ends then,
  not after ``timeout`` (:func:`_abort_connections`), as does one in its TLS handshake or
  still being made (a server that does not answer the TCP handshake, :func:`_connect`); the
  name's lookup (DNS) is not ended so. :func:`fetch` then raises the stop (``KeyboardInterrupt``, ``SystemExit``), not
  the error of the connection it shut down, and keeps the ``.part`` for the rerun (but after
  a full disk, whose ``.part`` is deleted, stop or not).
- A redirect is followed only to the same scheme or to https (http to https is fine); one
  that changes to another (https to http, http to ftp) is refused naming both URLs.
- HTTP 5xx, 408 and 429 answers and network errors are retried ``retries`` times, waiting
  ``backoff * 2**attempt`` seconds (at most ``MAX_BACKOFF``); other 4xx answers fail at once.
  So do TLS errors of the two ends (:func:`_transient_tls`): a certificate that fails
  verification, a handshake the server refuses or cannot speak (plain http on the port); those
  of the network (a connection cut, a record damaged after the handshake) are retried.
- A file already present whose checksum matches is not fetched again ("skipped"). Without a
  checksum, the caller's ``validate`` (a zip, JSON or image check) must accept the download
  before it is renamed into place, and an existing file before it is skipped.
- :func:`extract_zip` extracts into a temporary folder beside the target and renames it
  into place only when every member is extracted; members with absolute paths, ``..``
  components, drive letters or symlink/special-file modes are refused before anything is
  written, and so is an archive that would unpack to too much (a zip bomb, from a mirror or a
  ``from_dir`` archive): more than ``max_bytes`` in all (:data:`MAX_UNZIPPED_BYTES`, 16 GiB),
  or a member larger than 1 MiB compressed more than ``max_ratio`` to 1
  (:data:`MAX_ZIP_RATIO`, 200), or members unpacking to more than 1 MiB together compressed
  more than that in all: the whole archive's, and its members of up to 1 MiB together (256
  members of 1 MiB of zeros each, 284 KiB in all, unpacked to 256 MiB). The bytes actually
  written are counted too.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import http.client
import json
import os
import selectors
import shutil
import socket
import stat
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from bafusion._version import __version__
from bafusion.atomic import part_folder, part_path, raise_if_stopped, replace_folder, stop_requested, sync_tree
from bafusion.errors import UserError, json_loads
from bafusion.progress import bar_options
from bafusion.workspace import home_path

try:
    import ssl
except ImportError:  # Python built without ssl: no https
    ssl = None  # type: ignore[assignment]

#: Bytes read per chunk while streaming a download.
CHUNK = 1 << 16
#: HTTP status codes worth retrying (server trouble, rate limiting, request timeout).
RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = f"bafusion/{__version__} (+https://github.com/; dataset fetcher)"
HASH_ALGORITHMS = ("sha256", "md5", "sha1", "sha512")
#: Hex digits of a digest of each algorithm.
HEX_DIGITS = {"sha256": 64, "md5": 32, "sha1": 40, "sha512": 128}
#: Longest wait between two attempts, in seconds.
MAX_BACKOFF = 120.0
#: Longest ``timeout`` (seconds): a day. Python's sockets take at most about 9.2e9 s; a longer
#: one (``download.net.timeout: 1e10``) was an OverflowError at the first connection.
MAX_TIMEOUT = 86400.0
#: Most bytes one download may hold when its size is not known in advance (4 GiB: the largest
#: file the pipeline fetches, COCO's annotations, is 241 MiB). Parameter ``max_bytes``.
MAX_DOWNLOAD_BYTES = 4 * 2**30
#: Slowest average rate (bytes/s) an attempt may keep after its first ``timeout`` seconds;
#: slower, it is stopped (a server dripping bytes would otherwise hold it for ever).
#: Parameter ``min_rate``; None: no bound.
MIN_RATE = 1024.0


class DownloadError(UserError):
    """A download that failed for good: the message names the URL and what went wrong."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(f"{shown_location(url)}: {problem}")


class ChecksumError(DownloadError):
    """The bytes fetched from ``url`` do not have the expected digest."""

    def __init__(self, url: str, algorithm: str, expected: str, actual: str) -> None:
        self.algorithm, self.expected, self.actual = algorithm, expected, actual
        super().__init__(url, f"{algorithm} mismatch: expected {expected}, got {actual} (the download was deleted)")


class _Retryable(Exception):
    """A transient failure: the attempt may be repeated (resuming if bytes were kept)."""


@dataclass(frozen=True)
class Checksum:
    """An expected digest, written ``"<algorithm>:<hex>"`` (e.g. ``"sha256:78d4..."``)."""

    algorithm: str
    hexdigest: str

    @classmethod
    def parse(cls, text: str | Checksum | None) -> Checksum | None:
        if text is None or isinstance(text, Checksum):
            return text
        text = text.strip()
        if not text:
            return None
        algo, sep, value = text.partition(":")
        if not sep:  # a bare hex digest: guess the algorithm from its length
            value = algo
            algo = {n: a for a, n in HEX_DIGITS.items()}.get(len(value), "")
        algo = algo.lower()
        if algo not in HASH_ALGORITHMS:
            raise UserError(f"checksum {text!r}: expected '<algorithm>:<hex>' with algorithm in {HASH_ALGORITHMS}")
        value = value.lower()
        if not value or any(c not in "0123456789abcdef" for c in value):
            raise UserError(f"checksum {text!r}: the digest is not hexadecimal")
        if len(value) != HEX_DIGITS[algo]:
            raise UserError(f"checksum {text!r}: a {algo} digest has {HEX_DIGITS[algo]} hex digits, not {len(value)}")
        return cls(algo, value)

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hexdigest}"


def file_digest(path: str | os.PathLike[str], algorithm: str = "sha256") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | os.PathLike[str], checksum: Checksum | None) -> bool:
    """True when ``path`` exists and matches ``checksum`` (any existing file when it is None)."""
    p = Path(path)
    if not p.is_file():
        return False
    return checksum is None or file_digest(p, checksum.algorithm) == checksum.hexdigest


URL_SCHEMES = ("http", "https", "file")


def to_url(location: str | os.PathLike[str]) -> str:
    """A URL for ``location``: http(s)/file URLs are kept, a local path becomes ``file://``.

    Another scheme (``ftp://...``) or a malformed URL is a :class:`UserError` naming it.
    """
    s = os.fspath(location)
    try:
        parts = urllib.parse.urlsplit(s)
        scheme = parts.scheme.lower()
        if scheme in ("http", "https"):
            _ = parts.port  # raises ValueError for a port that is no number or out of range
            if not parts.hostname:
                raise ValueError("no host name")
    except ValueError as e:
        raise UserError(f"{s}: malformed URL ({e})") from e
    if scheme in URL_SCHEMES:
        return s
    if "://" in s:
        raise UserError(f"{s}: unsupported URL scheme {scheme or '(empty)'} (expected http, https, file or a local path)")
    return Path(home_path(s)).resolve().as_uri()  # ~/mirror, kept as written in records


def shown_location(url: str) -> str:
    """``url`` as a message shows it: a ``file://`` URL (a local folder given as the source,
    :func:`to_url`) as the local path it names, another URL as it is. Records keep the URL."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme.lower() != "file":
        return url
    path = urllib.request.url2pathname(parts.path)
    return f"//{parts.netloc}{path}" if parts.netloc not in ("", "localhost") else path


def join_url(base: str, name: str) -> str:
    """``base`` (URL or local folder) joined with a relative ``name`` (``/``-separated)."""
    base = to_url(base)
    return base.rstrip("/") + "/" + urllib.parse.quote(name.lstrip("/"))


@dataclass
class FetchResult:
    """What :func:`fetch` did: ``status`` is ``downloaded`` or ``skipped`` (already verified)."""

    url: str
    path: Path
    status: str
    bytes: int = 0
    digest: str = ""
    resumed_from: int = 0


@dataclass
class FetchSummary:
    """Downloaded, skipped (already present and verified) and failed files of a batch."""

    downloaded: list[FetchResult] = field(default_factory=list)
    skipped: list[FetchResult] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (url, message)

    def add(self, result: FetchResult) -> None:
        (self.downloaded if result.status == "downloaded" else self.skipped).append(result)

    def extend(self, other: FetchSummary) -> None:
        self.downloaded += other.downloaded
        self.skipped += other.skipped
        self.failed += other.failed

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.downloaded)

    def as_dict(self) -> dict[str, object]:
        return {
            "downloaded": len(self.downloaded),
            "skipped": len(self.skipped),
            "failed": len(self.failed),
            "bytes_downloaded": self.bytes,
            "failures": [{"url": u, "error": m} for u, m in self.failed],
        }

    def format(self, what: str = "files") -> str:
        lines = [
            f"{what}: {len(self.downloaded)} downloaded ({human_bytes(self.bytes)}), "
            f"{len(self.skipped)} skipped (already present and verified), {len(self.failed)} failed"
        ]
        for url, msg in self.failed[:20]:
            lines.append(f"  FAILED {shown_location(url)}: {msg}")
        if len(self.failed) > 20:
            lines.append(f"  ... and {len(self.failed) - 20} more failures")
        return "\n".join(lines)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover


def _bar(total: int | None, desc: str, initial: int, enabled: bool) -> tqdm:
    """A byte progress bar: bytes, rate and (when the size is known) ETA."""
    return tqdm(
        total=total,
        initial=initial,
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        # a bar on a terminal; in a log a plain line at times (bafusion.progress)
        **bar_options(enabled, sized=total is not None, leave=False, mininterval=0.2, file=sys.stderr),
    )


def _content_range_total(value: str | None) -> int | None:
    """Total size from ``Content-Range: bytes a-b/total`` (None when absent or ``*``)."""
    if not value or "/" not in value:
        return None
    tail = value.rsplit("/", 1)[1].strip()
    return int(tail) if tail.isdigit() else None


def _range_start(value: str | None) -> int | None:
    if not value:
        return None
    try:
        unit, rng = value.strip().split(" ", 1)
        return int(rng.split("-", 1)[0]) if unit.lower() == "bytes" else None
    except ValueError:
        return None


def _meta_path(part: Path) -> Path:
    """Where the validators of the first answer that wrote ``part`` are kept (JSON)."""
    return part.with_name(part.name + ".meta")


def _drop_part(part: Path) -> None:
    """Delete ``part`` and its ``.meta``."""
    for p in (part, _meta_path(part)):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _read_meta(part: Path) -> dict[str, object]:
    """The ``.meta`` of ``part`` (empty when missing or unreadable)."""
    try:
        doc = json_loads(_meta_path(part).read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def _strong_etag(value: str | None) -> str | None:
    """An ``ETag`` that ``If-Range`` may carry: a strong one (a weak ``W/"..."`` may not)."""
    return value if value and not value.startswith("W/") else None


def _if_range(part: Path, url: str) -> str | None:
    """The ``If-Range`` validator to resume ``part`` from ``url`` with: the strong ``ETag``,
    else the ``Last-Modified``, of the answer that started it (None when none was kept, or
    it came from another URL)."""
    meta = _read_meta(part)
    if meta.get("url") != url:
        return None
    for key in ("etag", "last_modified"):
        value = meta.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _write_meta(part: Path, url: str, etag: str | None, last_modified: str | None, size: int | None) -> None:
    """Keep the validators of an answer that starts ``part`` from zero (none: no ``.meta``)."""
    meta = _meta_path(part)
    with contextlib.suppress(FileNotFoundError):
        meta.unlink()  # also a symbolic link: never written through
    if etag or last_modified:
        doc = {"url": url, "etag": etag, "last_modified": last_modified, "size": size}
        meta.write_text(json.dumps(doc) + "\n", encoding="utf-8")


def _same_file_416(part: Path, url: str, answer: http.client.HTTPMessage, have: int) -> bool:
    """Whether the 416 ``answer`` to ``Range: bytes=<have>-`` vouches that ``part`` is the whole
    file it started as: its ``Content-Range`` total is ``have``, and it carries a validator
    (``ETag``, ``Last-Modified``) equal to the one kept in the part's ``.meta``, none other.
    A server that ignores ``If-Range`` answers 416 for a file replaced by one of the same size."""
    meta = _read_meta(part)
    if meta.get("url") != url or _content_range_total(answer.get("Content-Range")) != have:
        return False
    if meta.get("size") is not None and meta.get("size") != have:
        return False
    pairs = [(now, then) for now, then in ((_strong_etag(answer.get("ETag")), meta.get("etag")),
                                          (answer.get("Last-Modified"), meta.get("last_modified"))) if now and then]
    return bool(pairs) and all(now == then for now, then in pairs)


class _SameSchemeRedirects(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to the same scheme or to https: an https download answered
    with a redirect to plain http (a downgrade), or an http one sent to ftp://, is refused
    with a :class:`DownloadError` naming both URLs (files without a checksum, such as COCO
    photos, are only checked to decode)."""

    def redirect_request(self, req: urllib.request.Request, fp: object, code: int, msg: str,
                         headers: object, newurl: str) -> urllib.request.Request | None:
        old = urllib.parse.urlsplit(req.full_url).scheme.lower()
        new = urllib.parse.urlsplit(newurl).scheme.lower()
        if new != old and new != "https":
            with contextlib.suppress(Exception):
                fp.close()  # type: ignore[attr-defined]
            raise DownloadError(req.full_url, f"refusing the redirect (HTTP {code}) to {newurl}: it changes the scheme "
                                              f"from {old} to {new} (only the same scheme or https is followed)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)  # type: ignore[arg-type]


#: The sockets of the HTTP(S) connections open now, shut down by :func:`_abort_connections`.
_connections: weakref.WeakSet[socket.socket] = weakref.WeakSet()
_connections_lock = threading.Lock()


def _shut(sock: socket.socket) -> None:
    """Shut ``sock`` down both ways: a read of it waiting in another thread returns at once (no
    more bytes, or an error). Its own ``socket.shutdown``: an ``SSLSocket``'s would drop its TLS
    state under that read. A socket closed already (its descriptor -1, never another file's) is
    left."""
    with contextlib.suppress(OSError):
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _abort_connections() -> None:
    """Shut down every open download connection (:func:`_stoppable`) when the command is
    stopped: a worker thread of :func:`fetch_many`, which the signal does not interrupt, waited
    in a read of a server that had stopped sending for the whole ``timeout`` (60 s by default,
    up to a day), and the stopped command waited for it. Its read ends at once, and the stop
    (recorded before, :func:`bafusion.atomic.request_stop`) is raised by the worker
    (:func:`_attempt`): nothing is renamed into place. A connection that opens later is shut
    down as it opens."""
    with _connections_lock:
        for sock in list(_connections):
            _shut(sock)


@functools.lru_cache(maxsize=None)
def _stoppable(connection: type) -> type:
    """``connection`` (``http.client.HTTPConnection`` or ``HTTPSConnection``) whose open socket
    is known to :func:`_abort_connections`; one opened after the stop is shut down at once. The
    socket is known as soon as it is connected, before a proxy's tunnel and the TLS handshake (a
    server that accepted and never answered the handshake held a stop for the whole
    ``timeout``), and the TLS socket that takes it over once it is set up; its connect is
    :func:`_create_connection`'s, which the stop ends."""

    class Stoppable(connection):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)

            def known(*args: object, **kwargs: object) -> socket.socket:
                # not http.client's socket.create_connection: a connect the stop cannot end
                sock = _create_connection(*args, **kwargs)  # type: ignore[arg-type]
                _known(sock)
                return sock

            setattr(self, "_create_connection", known)
            context = getattr(self, "_context", None)
            if context is not None:  # https: the TLS socket of the handshake
                setattr(self, "_context", _KnownTLS(context))

        def connect(self) -> None:
            super().connect()
            _known(self.sock)

    Stoppable.__name__ = Stoppable.__qualname__ = f"Stoppable{connection.__name__}"
    return Stoppable


#: What a non-blocking ``connect`` answers while the connection is being made.
_CONNECTING = frozenset(e for e in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, errno.EALREADY,
                                    getattr(errno, "WSAEWOULDBLOCK", None)) if e is not None)
#: Longest wait (seconds) of a connect between two looks at the stop (:func:`_connect`).
_CONNECT_POLL_S = 0.05


def _connect(sock: socket.socket, where: object, timeout: float | None) -> None:
    """Connect ``sock`` to ``where`` within ``timeout`` seconds (``None``: no bound), ended by the
    command's stop (:func:`bafusion.atomic.raise_if_stopped` raises it) within
    :data:`_CONNECT_POLL_S`: a server whose host drops the TCP handshake (a firewall, a full
    backlog) held a stopped command for the whole ``timeout`` (60 s by default, up to a day),
    the connect of a worker thread of :func:`fetch_many` being beyond the signal's reach, and its
    socket, not yet returned, beyond :func:`_abort_connections`'. ``sock`` is left with
    ``timeout`` set, as ``socket.create_connection`` leaves it."""
    deadline = None if timeout is None else time.monotonic() + timeout
    sock.setblocking(False)
    err = sock.connect_ex(where)  # type: ignore[arg-type]
    if err and err not in _CONNECTING:
        raise OSError(err, os.strerror(err))
    if err:
        with selectors.DefaultSelector() as selector:
            selector.register(sock, selectors.EVENT_WRITE)  # ready once connected, or failed
            while True:
                raise_if_stopped()
                left = _CONNECT_POLL_S if deadline is None else min(_CONNECT_POLL_S, deadline - time.monotonic())
                if left <= 0:
                    raise TimeoutError("timed out")
                if selector.select(left):
                    break
        raise_if_stopped()
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
    sock.settimeout(timeout)


def _create_connection(address: tuple[str, int], timeout: object = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
                       source_address: tuple[str, int] | None = None) -> socket.socket:
    """``socket.create_connection`` (each address of the host in turn, the first error raised
    where none connects), whose connects the stop ends (:func:`_connect`)."""
    host, port = address
    seconds = socket.getdefaulttimeout() if timeout is socket._GLOBAL_DEFAULT_TIMEOUT else timeout  # type: ignore[attr-defined]
    errors: list[OSError] = []
    for family, kind, proto, _name, where in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
        sock = socket.socket(family, kind, proto)
        try:
            if source_address:
                sock.bind(source_address)
            _connect(sock, where, seconds)  # type: ignore[arg-type]
            return sock
        except OSError as e:
            sock.close()
            errors.append(e)
        except BaseException:
            sock.close()
            raise
    if errors:
        raise errors[0]
    raise OSError(f"getaddrinfo of {host!r} returns no address")


class _KnownTLS:
    """An ``ssl.SSLContext`` whose ``wrap_socket`` makes the TLS socket known
    (:func:`_known`) before its handshake: the connected socket it takes over is detached (its
    descriptor -1, no use to :func:`_shut`) before the handshake starts."""

    def __init__(self, context: object) -> None:
        self._context = context

    def wrap_socket(self, sock: socket.socket, *args: object, **kwargs: object) -> socket.socket:
        handshake = kwargs.pop("do_handshake_on_connect", True)
        tls = self._context.wrap_socket(sock, *args, do_handshake_on_connect=False, **kwargs)  # type: ignore[attr-defined]
        _known(tls)
        if handshake:
            tls.do_handshake()
        return tls  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> object:
        return getattr(self._context, name)


def _known(sock: socket.socket) -> None:
    """Make ``sock`` known to :func:`_abort_connections`; shut it down at once after the stop."""
    with _connections_lock:
        _connections.add(sock)
        if stop_requested() is not None:
            _shut(sock)


class _StoppableHTTP(urllib.request.HTTPHandler):
    def do_open(self, http_class: type, req: urllib.request.Request,  # type: ignore[override]
                **kwargs: object) -> object:
        return super().do_open(_stoppable(http_class), req, **kwargs)  # type: ignore[arg-type]


_HANDLERS: list[type] = [_SameSchemeRedirects, _StoppableHTTP]
if hasattr(urllib.request, "HTTPSHandler"):  # Python built with ssl

    class _StoppableHTTPS(urllib.request.HTTPSHandler):
        def do_open(self, http_class: type, req: urllib.request.Request,  # type: ignore[override]
                    **kwargs: object) -> object:
            return super().do_open(_stoppable(http_class), req, **kwargs)  # type: ignore[arg-type]

    _HANDLERS.append(_StoppableHTTPS)

_OPENER = urllib.request.build_opener(*_HANDLERS)


#: The exceptions of the TLS layer (none where Python was built without ``ssl``).
_SSL_ERRORS: tuple[type[Exception], ...] = (ssl.SSLError,) if ssl is not None else ()
#: The transfer's errors of a request's opening (:func:`_attempt`): retried, but for TLS errors
#: of the two ends (:func:`_transient_tls`).
_OPEN_ERRORS: tuple[type[Exception], ...] = (urllib.error.URLError, TimeoutError, socket.timeout, ConnectionError,
                                             http.client.HTTPException, *_SSL_ERRORS)


#: The OpenSSL reasons of a peer's alerts that are retried (:func:`_transient_tls`): a record
#: that its MAC or length says was damaged on the way, and the server's internal error.
_TRANSIENT_TLS_ALERTS = ("ALERT_BAD_RECORD_MAC", "ALERT_DECRYPTION_FAILED", "ALERT_RECORD_OVERFLOW",
                         "ALERT_INTERNAL_ERROR")


def _transient_tls(error: BaseException, handshake: bool) -> bool:
    """Whether the TLS ``error`` (an ``ssl.SSLError``) is trouble of the network, which another
    attempt may not meet (retried, as other network errors are), rather than of the two ends,
    which it meets again: the connection cut or closed (``SSLEOFError``, ``SSLZeroReturnError``,
    ``SSLSyscallError``) is retried; a certificate that fails verification (self-signed, expired,
    for another host) and an alert of the server (a handshake it refused: a protocol version or
    cipher not shared, a certificate it wants) are not, but for its alerts of a record damaged on
    the way and of its internal error (:data:`_TRANSIENT_TLS_ALERTS`), retried. Another ``SSLError`` is retried after the
    ``handshake`` (a record that does not decrypt: bytes damaged on the way), not in it (a plain
    http server on the port: "wrong version number")."""
    if ssl is None or not isinstance(error, ssl.SSLError):
        return True
    if isinstance(error, ssl.SSLCertVerificationError):
        return False
    if isinstance(error, (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError, ssl.SSLWantReadError,
                          ssl.SSLWantWriteError)):
        return True
    reason = str(getattr(error, "reason", None) or "")
    if "ALERT" in reason:
        # but the alerts of bytes damaged on the way (the server could not decrypt ours) and of
        # the server's own trouble (internal_error: overloaded, a back end not ready), which
        # another attempt may not meet, as the same damage found here is retried
        return any(alert in reason for alert in _TRANSIENT_TLS_ALERTS)
    return not handshake


def _attempt(
    url: str, part: Path, timeout: float, bar_desc: str | None, progress: bool, headers: dict[str, str],
    checked: bool = False, limit: tuple[int, str] | None = None, min_rate: float | None = MIN_RATE,
) -> tuple[int, int]:
    """One HTTP(S) attempt, appending to ``part`` from its current size (with ``If-Range``
    when its ``.meta`` holds a validator, see :func:`_if_range`). ``checked``: a checksum will
    tell whether a ``part`` that is already whole (416) is the file; without one, such a part is
    kept only when the 416 vouches for it (:func:`_same_file_416`), else it starts from zero.

    ``limit`` is ``(most bytes, what that bound is)``: a file announced or sent larger is a
    final :class:`DownloadError` (the part deleted). ``min_rate``: see :data:`MIN_RATE`.

    Returns ``(resumed_from, total_size)``. Raises :class:`_Retryable` for transient trouble
    (the bytes received so far stay in ``part``) and :class:`DownloadError` for final errors.
    """
    have = part.stat().st_size if part.exists() else 0
    req_headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
    condition = _if_range(part, url) if have else None
    if have:
        req_headers["Range"] = f"bytes={have}-"
        if condition:
            req_headers["If-Range"] = condition
    req = urllib.request.Request(url, headers=req_headers)
    try:
        resp = _OPENER.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        with contextlib.suppress(Exception):
            e.close()
        if e.code == 416 and have:
            # Range not satisfiable: the part is probably already whole. With a checksum the
            # caller verifies it; without one only the 416's validators can say it is the file.
            total = _content_range_total(e.headers.get("Content-Range"))
            if (checked and total in (None, have)) or (not checked and _same_file_416(part, url, e.headers, have)):
                return have, have
            _drop_part(part)  # a stale or unvouched part: the whole file, in this attempt
            return _attempt(url, part, timeout, bar_desc, progress, headers, checked, limit, min_rate)
        if e.code in RETRY_STATUS:
            raise _Retryable(f"HTTP {e.code} {e.reason}") from e
        raise DownloadError(url, f"HTTP {e.code} {e.reason}") from e
    except _OPEN_ERRORS as e:
        raise_if_stopped()  # its connection shut down by the stop (_abort_connections)
        reason = getattr(e, "reason", e)
        # an SSLError wrapped in a URLError came in the handshake (or the request's sending), a
        # bare one while the headers were read (it was not caught: not retried, the part deleted);
        # a bare one's own ``reason`` is a string (its OpenSSL reason), never the error: it was
        # never judged, a server's alert there (a client certificate wanted) retried
        tls = e.reason if isinstance(e, urllib.error.URLError) else e
        if isinstance(tls, _SSL_ERRORS) and not _transient_tls(tls, handshake=tls is not e):
            raise DownloadError(url, f"TLS error, not retried (another attempt meets it again): {tls}") from e
        raise _Retryable(f"{e.__class__.__name__}: {reason}") from e
    with resp:
        status = getattr(resp, "status", 200) or 200
        length = resp.headers.get("Content-Length")
        length_i = int(length) if length and length.isdigit() else None
        start = 0
        etag, modified = _strong_etag(resp.headers.get("ETag")), resp.headers.get("Last-Modified")
        if have and status == 206:
            start = _range_start(resp.headers.get("Content-Range"))
            if start != have:
                _drop_part(part)
                got = resp.headers.get("Content-Range")
                raise _Retryable(f"server answered Range bytes={have}- with {got!r}; restarting")
            total = _content_range_total(resp.headers.get("Content-Range"))
            if total is None and length_i is not None:
                total = have + length_i
            if condition:  # a server that ignores If-Range sends the range of a changed file
                meta = _read_meta(part)
                changed = [
                    f"{name} {now!r}, was {then!r}"
                    for name, now, then in (
                        ("ETag", etag, meta.get("etag")),
                        ("Last-Modified", modified, meta.get("last_modified")),
                        ("size", total, meta.get("size")),
                    )
                    if now is not None and then is not None and now != then
                ]
                if changed:
                    _drop_part(part)
                    raise _Retryable(f"the file changed on the server since the kept bytes ({'; '.join(changed)}); "
                                     "restarting")
        else:  # a full body: start over (file:// and servers that ignore Range land here)
            have = 0
            total = length_i
            _write_meta(part, url, etag, modified, total)
        if limit is not None and total is not None and total > limit[0]:
            _drop_part(part)
            raise DownloadError(url, f"the server announces {total} bytes, more than {limit[1]} ({limit[0]} bytes); "
                                     "refused, nothing was kept")
        received = 0
        t0 = time.monotonic()
        # unbuffered: a write that fails (a full disk) fails in _write_part, never later in a
        # flush at close, where it was taken for a transfer error or named no file
        with open(part, "ab" if start else "wb", buffering=0) as f, \
                _bar(total, bar_desc or "", start, progress and bar_desc is not None) as bar:
            try:
                while True:
                    # read1: what has arrived (one read of the socket), so that the bounds
                    # below are checked while a slow or endless body streams in
                    chunk = resp.read1(CHUNK)
                    if not chunk:
                        break
                    if limit is not None and start + received + len(chunk) > limit[0]:
                        f.close()
                        _drop_part(part)
                        raise DownloadError(url, f"the server sent more than {limit[1]} ({limit[0]} bytes); "
                                                 "the download was deleted")
                    _write_part(f, chunk, part)
                    received += len(chunk)
                    bar.update(len(chunk))
                    # a worker thread of fetch_many is not interrupted by the signal (the main
                    # thread is): its download stops here, its .part kept for the rerun
                    raise_if_stopped()
                    # not once the body is complete: its last chunk came in, however late
                    complete = total is not None and start + received >= total
                    slow = None if complete else _too_slow(received, time.monotonic() - t0, timeout, min_rate)
                    if slow:
                        raise _Retryable(f"too slow: {slow}")
            except _PartWriteError:
                raise  # this machine's disk, not the transfer: not retried
            except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException, OSError) as e:
                raise_if_stopped()  # its connection shut down by the stop (_abort_connections)
                raise _Retryable(f"transfer interrupted after {start + received} bytes ({e.__class__.__name__}: {e})") from e
        # the end of a body of unknown length may be the stop's shutdown (_abort_connections)
        raise_if_stopped()
        size = start + received
        if total is not None and size < total:
            raise _Retryable(f"connection closed after {size} of {total} bytes")
        if total is not None and size > total:
            _drop_part(part)
            raise _Retryable(f"received {size} bytes, more than the announced {total}; restarting")
        return start, size


#: The errors of a copy that only its destination's disk gives (full, a quota, a file-size limit,
#: read-only): a local source copied from a ``file://`` URL or a folder said "<source>: cannot copy
#: <source>: [Errno 28] No space left on device: ...", as if the source were at fault.
_PART_WRITE_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG, errno.EROFS})


class _PartWriteError(OSError):
    """A write of a download's ``.part`` file failed (a full disk, a quota): this machine's
    problem, not the transfer's. It names the file, is not retried, and the part is deleted (its
    bytes would keep the disk full). It was taken for a transfer error ("transfer interrupted
    ... No space left on device; a rerun resumes from there") and retried, or, failing in the
    flush at close, said as the output folder's ("am: No space left on device") when the disk
    that was full was the download cache's."""


def _write_part(f: BinaryIO, chunk: bytes, part: Path) -> None:
    """Write all of ``chunk`` to the unbuffered file ``f`` (``part``), whose writes may be
    partial; a failure is a :class:`_PartWriteError` naming ``part``."""
    view = memoryview(chunk)
    while view:
        try:
            n = f.write(view)
        except OSError as e:
            raise _PartWriteError(e.errno, e.strerror or str(e), os.fspath(part)) from e
        view = view[n or 0:]


def _too_slow(received: int, elapsed: float, grace: float, min_rate: float | None) -> str | None:
    """Why an attempt that got ``received`` bytes in ``elapsed`` seconds is too slow (None
    when it is not): after ``grace`` seconds, it must average ``min_rate`` bytes/s since then."""
    if min_rate is None or min_rate <= 0 or elapsed <= grace:
        return None
    if received >= min_rate * (elapsed - grace):
        return None
    return (f"{received} bytes in {elapsed:.1f} s, below the minimum rate of {human_bytes(min_rate)}/s "
            f"after {grace:g} s (min_rate)")


def _limit(size: int | None, max_bytes: int | None) -> tuple[int, str] | None:
    """The bound of a download and its name: the expected ``size``, else ``max_bytes``."""
    if size is not None:
        return int(size), "the expected size"
    if max_bytes is not None:
        return int(max_bytes), "the limit max_bytes"
    return None


def _retry_wait(backoff: float, attempt: int) -> float:
    """Seconds to wait before the retry after failed attempt ``attempt`` (0 for the first):
    ``backoff * 2**attempt``, at most :data:`MAX_BACKOFF`. The power is taken as a float of at
    most 2**1023: ``backoff * 2**attempt`` as Python's integer raised OverflowError ("int too
    large to convert to float") from attempt 1024 on (``download.net.retries`` has no bound)."""
    return min(MAX_BACKOFF, max(0.0, backoff) * 2.0 ** min(attempt, 1023))


def _wait_unless_stopped(seconds: float) -> None:
    """Sleep ``seconds``, ended by the command's stop (Ctrl-C, SIGTERM:
    :func:`bafusion.atomic.raise_if_stopped` raises it) as soon as it comes: a worker thread of
    :func:`fetch_many`, which the signal does not interrupt, waiting to retry a download held
    the stopped command through every wait and attempt left (30 s with ``--backoff 2`` and a
    server answering 503, minutes against one that does not answer)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 0.1))
        raise_if_stopped()


def fetch(
    url: str,
    dest: str | os.PathLike[str],
    *,
    checksum: str | Checksum | None = None,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    desc: str | None = None,
    validate: Callable[[Path], None] | None = None,
    headers: dict[str, str] | None = None,
    size: int | None = None,
    max_bytes: int | None = MAX_DOWNLOAD_BYTES,
    min_rate: float | None = MIN_RATE,
) -> FetchResult:
    """Download ``url`` (http, https, file, or a local path) to ``dest``.

    ``checksum`` is ``"<algorithm>:<hex>"``; with it, an existing ``dest`` that matches is
    skipped, and a download that does not match is deleted and reported. ``validate`` (e.g.
    an image decoder) is called on the completed ``.part`` and may raise to reject it; without
    a checksum it also decides whether an existing ``dest`` is skipped (one it rejects, such
    as an error page a server answered with 200 on an earlier run, is fetched again).
    ``retries`` further attempts follow a failed one after ``backoff * 2**attempt`` seconds.
    A ``<dest>.part`` of an earlier call is resumed as the module docstring says (without a
    checksum, only with ``If-Range`` and the validator kept in ``<dest>.part.meta``).
    ``size`` (the expected bytes, when known), else ``max_bytes``, bounds the download, and
    ``min_rate`` (bytes/s) its time, as the module docstring says.
    """
    if not 0 < timeout <= MAX_TIMEOUT:
        raise UserError(f"download timeout must be more than 0 and at most {MAX_TIMEOUT:g} s (a day), got {timeout!r}")
    ck = Checksum.parse(checksum)
    limit = _limit(size, max_bytes)
    dest = Path(dest)
    url = to_url(url)
    if verify(dest, ck) and (ck is not None or dest.stat().st_size > 0) and (ck is not None or _valid(dest, validate)):
        return FetchResult(url, dest, "skipped", 0, ck.hexdigest if ck else "")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    if part.is_symlink():  # written through, the link's target was changed and dest became a link
        part.unlink()
    if not part.exists() or (ck is None and _if_range(part, url) is None):
        # Without a checksum, a part this call did not write is resumed only when the server can
        # vouch that it is still the same file (If-Range with the validator kept in its .meta):
        # resumed blindly, a stale one was completed and renamed into place (a zip whose
        # directory reads but whose members do not), and skipped ever after.
        _drop_part(part)
    label = desc if desc is not None else dest.name
    validated = False  # validate accepted the part (a resumed one, below)
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    if scheme == "file":
        _drop_part(part)
        src = Path(urllib.request.url2pathname(urllib.parse.urlsplit(url).path))
        if not src.is_file():
            raise DownloadError(url, "local file not found")  # the message names src (shown_location)
        if limit is not None and src.stat().st_size > limit[0]:
            raise DownloadError(url, f"holds {src.stat().st_size} bytes, more than {limit[1]} ({limit[0]} bytes)")
        try:
            shutil.copyfile(src, part)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            if e.errno in _PART_WRITE_ERRNOS:  # the copy's disk, not the source: named as a download's
                raise _PartWriteError(e.errno, e.strerror or str(e), os.fspath(part)) from e
            raise DownloadError(url, f"cannot copy {src}: {e}") from e
        resumed, got = 0, part.stat().st_size
    else:
        resumed, got, attempt = 0, 0, 0
        initial = part.stat().st_size if part.exists() else 0
        restarted_after_mismatch = False
        pause = 0.0  # before a retry: _retry_wait's
        while True:
            try:
                # a worker thread of fetch_many is not interrupted by the signal (the main thread
                # is): its retries, and their waits, end when the command is stopped
                raise_if_stopped()
                if pause:
                    _wait_unless_stopped(pause)
                    pause = 0.0
                resumed, got = _attempt(url, part, timeout, label if progress else None, progress, headers or {},
                                        ck is not None, limit, min_rate)
                if resumed and not restarted_after_mismatch:
                    # The kept bytes may come from another version of the file, or be damaged:
                    # a file that fails its checksum (or, without one, validate) starts over once.
                    if ck is not None:
                        bad = file_digest(part, ck.algorithm) != ck.hexdigest
                    else:
                        bad = not _valid(part, validate)
                        validated = not bad
                    if bad:
                        _drop_part(part)
                        restarted_after_mismatch = True
                        continue
                break
            except _Retryable as e:
                if attempt >= retries:
                    resumable = part.exists() and (ck is not None or _if_range(part, url) is not None)
                    kept = part.stat().st_size if resumable else 0
                    if kept:  # keep the bytes: the next run resumes from them
                        hint = f"; {kept} bytes kept in {part}, a rerun resumes from there"
                    else:
                        hint = ""
                        _drop_part(part)
                    raise DownloadError(url, f"failed after {attempt + 1} attempts: {e}{hint}") from None
                pause = _retry_wait(backoff, attempt)
                attempt += 1
            except BaseException as e:
                # Keep the bytes of an interrupted run (KeyboardInterrupt, or SystemExit: the
                # CLI turns SIGTERM into one) for resuming; final errors leave nothing behind.
                # The same after the error of a connection that the stop shut down
                # (_abort_connections: an https answer's read may fail with an ssl.SSLError, which
                # _attempt does not catch), but for a full disk (_PartWriteError), whose part is
                # deleted, stop or not: its bytes would keep the disk full.
                signal_raised = isinstance(e, (KeyboardInterrupt, SystemExit))
                stopped = signal_raised or stop_requested() is not None
                if not stopped or isinstance(e, _PartWriteError) or (ck is None and _if_range(part, url) is None):
                    _drop_part(part)
                if stopped and not signal_raised:
                    # the stop is what is raised (the command says it was stopped), not the error
                    # it caused (a shut connection's, said as a network error or a bug), nor one
                    # that came with it (a full disk: the rerun meets it again); that error is
                    # kept as the stop's __context__
                    raise_if_stopped()
                raise
    digest = ""
    if ck is not None:
        digest = file_digest(part, ck.algorithm)
        if digest != ck.hexdigest:
            _drop_part(part)
            raise ChecksumError(url, ck.algorithm, ck.hexdigest, digest)
    if validate is not None and not validated:
        try:
            validate(part)
        except Exception as e:
            _drop_part(part)
            raise DownloadError(url, f"downloaded file rejected: {e}") from e
    os.replace(part, dest)
    _meta_path(part).unlink(missing_ok=True)
    if scheme == "file":
        return FetchResult(url, dest, "downloaded", got, digest, 0)
    return FetchResult(url, dest, "downloaded", max(0, got - min(initial, resumed)), digest, min(initial, resumed))


def _valid(path: Path, validate: Callable[[Path], None] | None) -> bool:
    """True when ``validate`` (if any) accepts ``path``."""
    if validate is None:
        return True
    try:
        validate(path)
    except Exception:
        return False
    return True


@dataclass(frozen=True)
class FetchJob:
    url: str
    dest: Path
    checksum: str | None = None
    #: the expected bytes, when known (a manifest's ``size``): the download's bound
    size: int | None = None


@contextlib.contextmanager
def _cancelled_when_stopped() -> Iterator[dict[Future[FetchResult], FetchJob]]:
    """The futures of :func:`fetch_many`, those not started cancelled when the command is
    stopped (Ctrl-C, SIGTERM): the pool's exit waited for every queued download, so a stopped
    ``download-eval`` went on fetching all its files without a word (the running ones stop at
    their next chunk, :func:`_attempt`, or at once where they wait on a server that stopped
    sending: their connections are shut down, :func:`_abort_connections`)."""
    futures: dict[Future[FetchResult], FetchJob] = {}
    try:
        yield futures
    except (KeyboardInterrupt, SystemExit):
        for fut in futures:
            fut.cancel()
        if stop_requested() is not None:  # the running ones stop now (their threads see the stop)
            _abort_connections()
        raise


def fetch_many(
    jobs: Sequence[FetchJob],
    *,
    workers: int = 4,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 60.0,
    progress: bool = True,
    desc: str = "download",
    validate: Callable[[Path], None] | None = None,
    max_bytes: int | None = MAX_DOWNLOAD_BYTES,
    min_rate: float | None = MIN_RATE,
) -> FetchSummary:
    """Fetch many (small) files with a thread pool; failures are collected, not raised, but for
    a failed write on this machine's disk (a full disk, a quota: :func:`fetch`'s ``OSError``
    naming the ``.part``), which is raised, the files not yet started left undone.
    Each file is bounded by its job's ``size``, else ``max_bytes`` (see :func:`fetch`).

    One progress bar counts files (with ETA) and shows the bytes and the byte rate.
    """
    summary = FetchSummary()
    lock = threading.Lock()
    t0 = time.monotonic()
    with tqdm(
        total=len(jobs),
        desc=desc,
        unit="file",
        **bar_options(progress, mininterval=0.2, file=sys.stderr),  # in a log a plain line at times
    ) as bar:

        def one(job: FetchJob) -> FetchResult:
            return fetch(
                job.url,
                job.dest,
                checksum=job.checksum,
                retries=retries,
                backoff=backoff,
                timeout=timeout,
                progress=False,
                validate=validate,
                size=job.size,
                max_bytes=max_bytes,
                min_rate=min_rate,
            )

        with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fetch") as pool, \
                _cancelled_when_stopped() as futures:
            futures.update({pool.submit(one, job): job for job in jobs})
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    res = fut.result()
                except UserError as e:
                    with lock:
                        summary.failed.append((job.url, getattr(e, "problem", str(e))))
                except _PartWriteError:  # this machine's disk (full): the files not yet started would fail alike
                    for other in futures:
                        other.cancel()
                    raise
                except OSError as e:
                    with lock:
                        summary.failed.append((job.url, f"{e.__class__.__name__}: {e}"))
                else:
                    with lock:
                        summary.add(res)
                bar.update(1)
                dt = max(time.monotonic() - t0, 1e-6)
                bar.set_postfix_str(f"{human_bytes(summary.bytes)}, {human_bytes(summary.bytes / dt)}/s", refresh=False)
    summary.failed.sort()
    return summary


# ---------------------------------------------------------------------------------------------
# Safe zip extraction


#: Most bytes the members of one archive may unpack to (16 GiB; the paper's largest archive,
#: COCO's annotations, unpacks to under 1 GB). Parameter ``max_bytes``; None: no bound.
MAX_UNZIPPED_BYTES = 16 * 2**30
#: Highest compression ratio (uncompressed / compressed) of a member larger than
#: :data:`RATIO_MIN_BYTES` (200: photos barely compress, COCO's JSON about 5-10x, zip bombs
#: 1000x and more). Parameter ``max_ratio``; None: no bound.
MAX_ZIP_RATIO = 200.0
#: Members up to this size are not held to the ratio one by one (a small file of zeros
#: compresses 1000x), nor members of this size in all; more of them together are
#: (:func:`check_zip_sizes`).
RATIO_MIN_BYTES = 1 << 20


def check_zip_sizes(
    archive: str | os.PathLike[str],
    infos: Sequence[zipfile.ZipInfo],
    *,
    max_bytes: int | None = MAX_UNZIPPED_BYTES,
    max_ratio: float | None = MAX_ZIP_RATIO,
) -> int:
    """Refuse, naming ``archive``, members that unpack to more than ``max_bytes`` in all or
    whose compression ratio exceeds ``max_ratio``: a member above :data:`RATIO_MIN_BYTES`, all
    the members together, and the members of up to :data:`RATIO_MIN_BYTES` together (each of
    these two only when they unpack to more than :data:`RATIO_MIN_BYTES`: many small members,
    each below the single member's bound, unpacked a 284 KiB archive to 256 MiB); returns their
    total uncompressed size (the sizes the archive declares; :func:`extract_zip` counts the
    bytes written)."""
    total = sum(i.file_size for i in infos)
    if max_bytes is not None and total > max_bytes:
        raise UserError(
            f"{archive}: refusing to extract: its members unpack to {human_bytes(total)}, more than the limit "
            f"of {human_bytes(max_bytes)} (max_bytes; a zip bomb?)"
        )
    if max_ratio is not None:
        for i in infos:
            ratio = i.file_size / max(i.compress_size, 1)
            if i.file_size > RATIO_MIN_BYTES and ratio > max_ratio:
                raise UserError(
                    f"{archive}: refusing to extract member {i.filename!r}: compressed {ratio:.0f} to 1, more "
                    f"than the limit of {max_ratio:g} to 1 (max_ratio; a zip bomb?)"
                )
        small = [i for i in infos if i.file_size <= RATIO_MIN_BYTES]
        for what, group in (("its members", infos),
                            (f"its {len(small)} members of up to {human_bytes(RATIO_MIN_BYTES)}", small)):
            size, packed = sum(i.file_size for i in group), sum(i.compress_size for i in group)
            ratio = size / max(packed, 1)
            if size > RATIO_MIN_BYTES and ratio > max_ratio:
                raise UserError(
                    f"{archive}: refusing to extract: {what} unpack to {human_bytes(size)} from "
                    f"{human_bytes(packed)}, compressed {ratio:.0f} to 1 together, more than the limit of "
                    f"{max_ratio:g} to 1 (max_ratio; a zip bomb?)"
                )
    return total


def _member_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member must not be extracted (None when it is safe)."""
    name = info.filename
    if "\x00" in name:
        return "NUL byte in the member name"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or PurePosixPath(norm).is_absolute():
        return "absolute path"
    if len(norm) >= 2 and norm[1] == ":":
        return "drive letter in the path"
    if any(part == ".." for part in norm.split("/")):
        return "'..' in the path (would land outside the target)"
    ftype = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver stored no Unix mode
    if ftype == stat.S_IFLNK:
        return "symbolic link"
    if ftype and ftype not in (stat.S_IFREG, stat.S_IFDIR):
        return "special file (device, fifo or socket)"
    return None


def _clean_name(name: str) -> str:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def check_zip(
    archive: str | os.PathLike[str],
    *,
    max_bytes: int | None = MAX_UNZIPPED_BYTES,
    max_ratio: float | None = MAX_ZIP_RATIO,
) -> list[zipfile.ZipInfo]:
    """The members of ``archive`` after checking every one is safe to extract (names, types,
    and :func:`check_zip_sizes`); raises :class:`UserError` naming the archive and the first
    unsafe member otherwise."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{archive}: not a readable zip archive ({e})") from e
    for info in infos:
        problem = _member_problem(info)
        if problem:
            raise UserError(f"{archive}: refusing to extract member {info.filename!r}: {problem}")
    check_zip_sizes(archive, infos, max_bytes=max_bytes, max_ratio=max_ratio)
    return infos


def extract_zip(
    archive: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    members: Callable[[str], bool] | None = None,
    strip_single_top: bool = True,
    max_bytes: int | None = MAX_UNZIPPED_BYTES,
    max_ratio: float | None = MAX_ZIP_RATIO,
) -> list[Path]:
    """Extract ``archive`` to the folder ``target`` (replacing it) safely and atomically.

    Every member is checked first (see :func:`check_zip`); extraction goes to a temporary
    folder beside ``target``, renamed into place only when complete. With
    ``strip_single_top``, an archive whose members all live in one top folder is extracted
    without it. ``members`` selects members by name. Returns the extracted files. A ``target``
    that is not a folder (a file, a link to one, a broken link) is refused before anything is
    extracted, naming it: it was swapped away, left hidden beside it as
    ``.<target>.extract-*``.

    The temporary folder, ``.<target>.part-<random>`` beside ``target``, is marked as
    bafusion's (:func:`bafusion.atomic.part_folder`): one left by a killed run is removed by the
    next extraction there (a run of this host whose process is gone), and one killed while the
    earlier ``target`` was away is completed by it (:func:`bafusion.atomic.replace_folder`).
    """
    archive, target = Path(archive), Path(target)
    if os.path.lexists(target) and not target.is_dir():
        kind = "a broken link" if target.is_symlink() and not target.exists() else "a file"
        raise UserError(f"{target}: is {kind}, not a folder: {archive} is extracted into a folder there, which "
                        "would replace it; remove it or extract elsewhere")
    infos = check_zip(archive, max_bytes=max_bytes, max_ratio=max_ratio)
    infos = [i for i in infos if not i.is_dir() and (members is None or members(i.filename))]
    budget = sum(i.file_size for i in infos)  # what the members say they hold; counted below
    names = [_clean_name(i.filename) for i in infos]
    prefix = ""
    if strip_single_top and names:
        tops = {n.split("/", 1)[0] for n in names}
        if len(tops) == 1 and all("/" in n for n in names):
            prefix = tops.pop() + "/"
    out: list[Path] = []
    current = ""  # the member being extracted, for the messages
    # marked as bafusion's (as atomic_dir's): one left by a killed run is removed by the next
    # (an unmarked `.<target>.extract-<pid>-<thread>` of versions before 2026-12-07 stayed for good)
    with part_folder(target) as wrap:
        tmp = wrap / target.name
        try:
            tmp.mkdir()
            root = tmp.resolve()
            with zipfile.ZipFile(archive) as zf:
                for info, name in zip(infos, names):
                    current = info.filename
                    rel = name[len(prefix):]
                    if not rel:
                        continue
                    dest = (root / rel).resolve()
                    if root not in dest.parents:  # belt and braces after _member_problem
                        raise UserError(f"{archive}: refusing to extract member {info.filename!r}: lands outside "
                                        "the target")
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(info) as src, open(dest, "xb") as dst:
                        while chunk := src.read(1 << 20):
                            budget -= len(chunk)
                            if budget < 0:
                                raise UserError(f"{archive}: refusing to extract: members hold more than they declare")
                            dst.write(chunk)
                    out.append(target / rel)
            sync_tree(tmp, target)  # on the disk before it is in place (a power cut: the earlier folder or this one)
            # one step where the system can swap (never neither in place); an earlier folder that cannot be
            # renamed (EXDEV: an overlay's lower layer, a container image's) removed in place; a kill while
            # the earlier folder is away: the next run puts this one in place (atomic's READY_MARKER)
            earlier = replace_folder(tmp, target, wrap / f"{target.name}.old")
            if earlier is not None:
                _remove_earlier(earlier)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:
            raise UserError(f"{archive}: corrupt zip archive ({e.__class__.__name__}: {e}); if it is a cached "
                            f"download, delete {archive} and run again: it is fetched anew") from e
        except (FileExistsError, NotADirectoryError) as e:
            # named by the member, not by the temporary folder's path it had
            raise UserError(f"{archive}: member {current!r} occurs twice, or as a file and as a folder") from e
    return out


def _remove_earlier(path: Path) -> None:
    """Remove ``path``, the earlier ``target`` that :func:`extract_zip` replaced: a folder, or
    a file put there meanwhile (``shutil.rmtree`` left a file in place without a word)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def read_zip_member(
    archive: str | os.PathLike[str],
    name: str,
    *,
    max_bytes: int | None = MAX_UNZIPPED_BYTES,
    max_ratio: float | None = MAX_ZIP_RATIO,
) -> bytes:
    """The bytes of one member (by exact name or by basename when unique), naming the archive
    on error; the member is held to :func:`check_zip_sizes`."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = zf.namelist()
            if name not in names:
                hits = [n for n in names if n.rsplit("/", 1)[-1] == name.rsplit("/", 1)[-1]]
                if len(hits) != 1:
                    more = " ..." if len(names) > 10 else ""
                    raise UserError(f"{archive}: no member {name!r} (it holds {names[:10]}{more})")
                name = hits[0]
            check_zip_sizes(archive, [zf.getinfo(name)], max_bytes=max_bytes, max_ratio=max_ratio)
            return zf.read(name)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{archive}: not a readable zip archive ({e})") from e
