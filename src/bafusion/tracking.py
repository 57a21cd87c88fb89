"""MLflow glue: one place that resolves the tracking URI and logs a pipeline step as a run.

- The URI is ``$MLFLOW_TRACKING_URI`` when set; otherwise ``sqlite:///<repo root>/mlflow.db`` (:func:`sqlite_uri`)
  where the repo root is ``$DVC_ROOT`` (set by DVC, also for ``dvc exp run --temp`` whose
  working copy is deleted afterwards), else the nearest folder above the working directory
  holding ``dvc.yaml`` or ``Snakefile``. Outside any project, nothing is logged unless
  ``$MLFLOW_TRACKING_URI`` is set (or ``$BAFUSION_MLFLOW=1``: then into the working
  directory), see :func:`enabled`; the pipeline's Snakemake sets ``BAFUSION_MLFLOW=1`` for its
  jobs when unset, so a ``--directory`` without a Snakefile is tracked as before.
- A fresh sqlite database is created (and migrated) once, under a file lock, so that
  parallel Snakemake jobs never race on alembic migrations, under a temporary name renamed into
  place when complete (:func:`_build_store`): a stop during its migrations (seconds) leaves no
  half-built store; one that an older version left so is built again when it holds no runs,
  else named in the warning with what to do (:func:`_store_state`); the experiment's artifacts go to
  ``mlruns/`` beside it (:func:`artifact_location`), whichever folder the first run began in;
  an older MLflow's relative ``./mlruns/<id>`` is anchored there too
  (:func:`_anchor_artifact_location`).
- ``BAFUSION_MLFLOW=0`` (or ``false``/``no``/``off``) in the environment turns logging off;
  nothing in the params does.
- A store that fails (a corrupt, read-only or locked database, a server that does not answer)
  never fails the work: one warning line names the store and the problem, and the process
  goes on untracked, its child processes too (Snakemake's jobs), see :func:`_turn_off`. A
  call of a run that fails is first tried again a few times (:data:`RETRIES`, a doubling wait
  from :data:`RETRY_BACKOFF_S`): a database locked for a moment loses nothing. A run whose
  store failed for good says at its end that it is incomplete and what it misses, and is
  ended ``FAILED`` with the tag ``bafusion.incomplete=true`` if the store answers again. An
  ``http(s)`` server is first tried with a short connect (:func:`check_reachable`), so that an
  unreachable one costs seconds, not MLflow's minutes of retries.
- One pipeline invocation is one parent run; each step is a nested child run of it (tag
  ``mlflow.parentRunId``). Snakemake's ``onstart`` opens the parent (:func:`begin_invocation`)
  and hands its id to the jobs in ``$BAFUSION_PARENT_RUN``. Under DVC every stage is its own
  Snakemake call, so the parent is found again by an invocation key (the DVC experiment's name,
  else the ``dvc`` process that runs the stages) and reopened. A step run by hand, outside
  both, is a top-level run.
- A step's run, and a parent run, names its process (host, PID, start time, PID namespace,
  boot: tags ``bafusion.process.*``); each step that starts ends as ``KILLED`` the runs still
  ``RUNNING`` whose process is known gone (SIGKILL), tagging them ``ended_by_run_id``
  (:meth:`_Run.end_dead_runs`); one it cannot end is named in a warning line, and the step's
  own run stays tracked.
- Every run carries MLflow's own source tags (``mlflow.source.name``, ``mlflow.source.type``),
  the bafusion version and a digest of its code (``bafusion.version``, ``bafusion.code_digest``),
  and, when bafusion runs from its own git checkout (an editable install), the commit it ran
  (``mlflow.source.git.commit``, shown by the UI) and ``bafusion.git_dirty`` (``true`` when the
  tracked source files had uncommitted changes: the code was not the commit's). The project a
  run starts in, when it is another git checkout (or bafusion is installed), is recorded as
  ``project.git_commit`` and ``project.git_dirty`` (:func:`source_tags`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit
from urllib.request import getproxies, proxy_bypass

EXPERIMENT = "bafusion"
#: Environment variable that carries the parent run's id from Snakemake to its jobs.
PARENT_ENV = "BAFUSION_PARENT_RUN"
#: Tags of a parent run: marks it, and the key that finds it again under DVC.
PARENT_TAG = "bafusion.parent"
INVOCATION_TAG = "bafusion.invocation"
#: The tag of a parent run ended ``KILLED`` by a stop signal: its name (``SIGTERM``).
STOPPED_BY_TAG = "bafusion.stopped_by"

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def project_root(start: Path | None = None) -> Path | None:
    """The project a command runs in: ``$DVC_ROOT`` (set by DVC), else the nearest folder at or
    above ``start`` (default: the working directory) holding ``dvc.yaml`` or ``Snakefile``;
    None outside any project (a folder of photos)."""
    if os.environ.get("DVC_ROOT"):
        return Path(os.environ["DVC_ROOT"]).resolve()
    return _nearest_project(start)


def _nearest_project(start: Path | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the working directory) holding
    ``dvc.yaml`` or ``Snakefile``, whatever ``$DVC_ROOT`` says; None outside any project."""
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "dvc.yaml").exists() or (d / "Snakefile").exists():
            return d
    return None


def repo_root(start: Path | None = None) -> Path:
    """:func:`project_root`, else ``start`` (default: the working directory) itself."""
    return project_root(start) or (start or Path.cwd()).resolve()


def tracking_uri(start: Path | None = None) -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return sqlite_uri(repo_root(start) / "mlflow.db")


def sqlite_uri(db: Path) -> str:
    """The tracking URI of the sqlite store file ``db``: ``sqlite:///<path>``.

    A path holding ``?`` is given as SQLite's URI file name,
    ``sqlite:///file:<percent-encoded path>?uri=true`` (SQLAlchemy passes it to SQLite, which
    decodes it): in the plain form SQLAlchemy takes ``?`` for the start of the URI's query, so
    a store under ``/home/me/proj?x`` was looked for at ``/home/me/proj`` and tracking was
    turned off. Other characters (``#``, ``%``, spaces) are taken literally in the plain form,
    except ``%`` where SQLAlchemy percent-decodes the URL's database part (2.1 does, 2.0 does
    not, :func:`_sqlalchemy_unquotes`): there a path holding ``%`` takes the URI form too, and
    the URI form's path is encoded twice, once for SQLAlchemy and once for SQLite (encoded once,
    SQLAlchemy 2.1 gave SQLite ``file:/home/me/proj?x/...``, read as ``/home/me/proj``).
    The slashes are encoded too: MLflow creates the parent folder of what follows
    ``sqlite:///``, which for ``file:/home/...`` would be a folder ``file:`` in the working
    directory. :func:`sqlite_path` reads both forms back.
    """
    path = os.fspath(db)
    unquotes = _sqlalchemy_unquotes()
    if "?" not in path and not (unquotes and "%" in path):
        return f"sqlite:///{path}"
    encoded = quote(path, safe="")
    if unquotes:
        encoded = quote(encoded, safe="")
    return f"sqlite:///file:{encoded}?uri=true"


def sqlite_path(uri: str) -> Path | None:
    """The store file of a ``sqlite:///`` tracking URI, as SQLAlchemy and SQLite read it: the
    path before the query (``?...``), percent-decoded where SQLAlchemy decodes it
    (:func:`_sqlalchemy_unquotes`), and in SQLite's URI form ``sqlite:///file:<path>?uri=true``
    (:func:`sqlite_uri`) the path before SQLite's own query, percent-decoded; ``None`` for
    another URI."""
    if not uri.startswith("sqlite:///"):
        return None
    rest, _, query = uri[len("sqlite:///"):].partition("?")
    if _sqlalchemy_unquotes():
        rest = unquote(rest)
    if rest.startswith("file:") and "uri=true" in query.split("&"):
        return Path(unquote(rest[len("file:"):].partition("?")[0]))
    return Path(rest)


@functools.lru_cache(maxsize=None)
def _sqlalchemy_unquotes() -> bool:
    """Whether the installed SQLAlchemy percent-decodes the database part of a URL, as 2.1 does
    (``sqlite:///a%3Fb`` is the file ``a?b``); 2.0 takes it literally. Asked of SQLAlchemy itself;
    False without SQLAlchemy (no store is opened then)."""
    try:
        from sqlalchemy.engine.url import make_url
    except ImportError:
        return False
    return make_url("sqlite:///a%25b").database == "a%b"


# A failing store is said in one line by _turn_off: MLflow's own logger printed ~65 lines of
# SQLAlchemy traceback before it ("ERROR mlflow.store.db.utils: SQLAlchemy database error").
logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)

#: The problem of the store that failed in this process (see :func:`_turn_off`), else None.
_broken: str | None = None
#: Seconds to wait for a tracking server to accept a connection (:func:`check_reachable`).
CONNECT_TIMEOUT = 5.0


def enabled() -> bool:
    """Whether steps are logged: ``$BAFUSION_MLFLOW`` is not ``0``/``false``/``no``/``off``, the
    store has not failed in this process, and tracking was asked for or has a project to go
    to: ``$MLFLOW_TRACKING_URI`` or ``$BAFUSION_MLFLOW`` (``1``) set, or a project found by
    :func:`project_root`. A command run outside any project (``bafusion evaluate`` in a folder
    of photos) logs nothing unless asked: the default store would be ``mlflow.db`` and
    ``mlruns/`` in that folder."""
    if _broken is not None:
        return False
    switch = os.environ.get("BAFUSION_MLFLOW", "").strip().lower()
    if switch in ("0", "false", "no", "off"):
        return False
    if not (bool(switch) or bool(os.environ.get("MLFLOW_TRACKING_URI")) or project_root() is not None):
        return False
    return _mlflow_installed()


#: What a command asked to track says when MLflow is not installed (the ``pipeline`` extra).
_NO_MLFLOW = ("bafusion: warning: MLflow is not installed, so this run is not tracked: pip install "
             "'bafusion[pipeline]' installs the pipeline's tools (BAFUSION_MLFLOW=0 turns tracking off)")


def _mlflow_installed() -> bool:
    """Whether MLflow can be imported (it comes with the ``pipeline`` extra, not with the fusion
    tool): where it cannot, say so once (:data:`_NO_MLFLOW`) and track nothing more, as a store
    that fails (:func:`_turn_off`); the command goes on."""
    global _broken
    import importlib.util

    try:
        if importlib.util.find_spec("mlflow") is not None:
            return True
    except (ImportError, ValueError):  # a broken or half-removed install: as not installed
        pass
    _broken = "MLflow is not installed"
    os.environ["BAFUSION_MLFLOW"] = "0"  # child processes (Snakemake's jobs) do not look again
    with contextlib.suppress(OSError, ValueError):
        print(_NO_MLFLOW, file=sys.stderr, flush=True)
    return False


def _turn_off(uri: str, error: BaseException, lost: str = "") -> None:
    """The store ``uri`` failed with ``error``: say so in one line (once) and track nothing more.

    ``lost`` says what goes untracked (a run's later metrics, ...); default: the work.

    The runs are a record of the work, never a reason to fail it. ``$BAFUSION_MLFLOW`` is set to
    ``0`` as well, so that child processes (Snakemake's jobs, after its ``onstart``) do not try
    the store again, each waiting for it. A stop signal whose exception the store's code lost
    (see :mod:`bafusion.atomic`) is raised again instead.
    """
    _raise_lost_stop()
    global _broken
    if _broken is not None:
        return
    problem = _first_line(error)
    _broken = problem
    os.environ["BAFUSION_MLFLOW"] = "0"
    print(f"bafusion: warning: MLflow tracking store {_shown(uri)}: {problem}; "
          f"{lost or 'going on without tracking'} "
          "(BAFUSION_MLFLOW=0 turns tracking off, MLFLOW_TRACKING_URI points it at another store)",
          file=sys.stderr, flush=True)


#: A terminal's escape sequence (colour, ...), dropped from the messages quoted into a log.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]")


@contextlib.contextmanager
def _warnings_not_errors() -> Iterator[None]:
    """Run MLflow's code under the process's warning filters, except that a warning made an
    error (``PYTHONWARNINGS=error``, ``-W error``, as CI jobs set) is shown as a warning: MLflow's
    own ``UserWarning`` ("Any type hint is inferred as AnyType", on every logged net) came out
    as an exception, taken for a failing store (tried 4 times, 4 FAILED logged models, the run
    FAILED and tracking off). Also a decorator."""
    with warnings.catch_warnings():
        kept = list(warnings.filters)
        if any(f[0] == "error" for f in kept):
            warnings.resetwarnings()
            for action, message, category, module, lineno in reversed(kept):
                warnings.filterwarnings("default" if action == "error" else action, _pattern(message), category,
                                        _pattern(module), lineno)
        yield


def _pattern(match: Any) -> str:
    """The pattern of a warning filter's message or module for :func:`warnings.filterwarnings`:
    a compiled one's own, or one that matches just a plain string (Python's built-in filters:
    ``__main__``), or ``""`` (any) for None."""
    if match is None:
        return ""
    return match.pattern if hasattr(match, "pattern") else re.escape(str(match)) + r"\Z"


def _first_line(error: BaseException) -> str:
    """The first line of ``error``'s message that says what went wrong (its type's name when it
    has none), at most 600 characters, without a final full stop: for a warning line.

    SQLAlchemy puts its notes on the error first, each a line of its own wholly in parentheses
    (``(raised as a result of Query-invoked autoflush; ...)``), and the cause after them
    (``(sqlite3.OperationalError) database or disk is full``): such lines are passed over, the
    first line is kept where every line is one."""
    text = _ANSI.sub("", str(error))  # MLflow colours some messages (ESC[1;33m ... ESC[0m)
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    said = [line for line in lines if not _is_note(line)]
    problem = (said or lines or [type(error).__name__])[0]
    return (problem[:600] + "..." if len(problem) > 600 else problem).rstrip(".")


def _is_note(line: str) -> bool:
    """Whether ``line`` is wholly one parenthesis, as SQLAlchemy's notes on an error are (the
    cause, ``(sqlite3.OperationalError) database or disk is full``, goes on after its own)."""
    if not (line.startswith("(") and line.endswith(")")):
        return False
    depth = 0
    for i, ch in enumerate(line):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth == 0:
            return i == len(line) - 1
    return False


def _shown(uri: str) -> str:
    """``uri`` without the password of its user, if any (it goes to logs)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = parts.netloc.rsplit("@", 1)
    return parts._replace(netloc=f"{parts.username}:***@{netloc[-1]}").geturl()


class Unreachable(Exception):
    """A tracking server that does not accept a connection."""


def check_reachable(uri: str, timeout: float = CONNECT_TIMEOUT) -> None:
    """Raise :class:`Unreachable` when the ``http(s)`` server of ``uri`` (or the proxy that
    requests would use for it) does not accept a TCP connection within ``timeout`` seconds.

    MLflow itself retries a refused or timed-out request for minutes; other URIs are not checked.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return
    host = parts.hostname
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:  # a port that is no number
        raise Unreachable(f"bad port in {uri}: {e}") from None
    via = ""
    proxy = getproxies().get(parts.scheme)
    if proxy and not proxy_bypass(host):
        pp = urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        if pp.hostname:
            host, port, via = pp.hostname, pp.port or 80, f" (the proxy {proxy})"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        why = "timed out" if isinstance(e, TimeoutError) else (e.strerror or str(e) or type(e).__name__)
        raise Unreachable(f"cannot connect to {host}:{port}{via}: {why}") from None


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists are kept as values."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def spelled(value: Any) -> str:
    """A param's value as MLflow logs it: ``str``, with tuples spelled as the lists params.yaml
    holds (``[1]``, not ``(1.0,)``) and whole floats as the whole numbers they are (``1``, not
    ``1.0``), so that a setting has one spelling in every run: ``train.lr: 1`` in params.yaml
    is the int 1 in the parent run and the float 1.0 the trainer casts it to in its own.

    Examples
    --------
    >>> spelled((1.0,)), spelled([1, (2, 3)]), spelled(0.01), spelled(True), spelled(1.0), spelled(2.5)
    ('[1]', '[1, [2, 3]]', '0.01', 'True', '1', '2.5')
    """
    def listed(v: Any) -> Any:
        if isinstance(v, (tuple, list)):
            return [listed(x) for x in v]
        if isinstance(v, Mapping):
            return {k: listed(x) for k, x in v.items()}
        if isinstance(v, float) and v.is_integer() and abs(v) < 2.0 ** 53:  # exactly that int
            return int(v)
        return v

    return str(listed(value))[:6000]


def artifact_location(uri: str) -> str | None:
    """Where the ``bafusion`` experiment keeps its artifacts: ``mlruns/`` beside a sqlite
    store (as a ``file:`` URI), so they land there whichever folder the first run started
    in (MLflow's default is ``./mlruns`` of that working directory); None for other stores
    (their server decides)."""
    db = sqlite_path(uri)
    if db is None:
        return None
    return (db.resolve().parent / "mlruns").as_uri()


def _create_experiment(client: Any, uri: str) -> str:
    return client.create_experiment(EXPERIMENT, artifact_location=artifact_location(uri))


def ensure_db(uri: str | None = None) -> str | None:
    """Create and migrate the sqlite store once, serialised by a lock file beside it; check that
    a tracking server is reachable.

    Returns
    -------
    str or None
        The tracking URI; None when the store failed, now (said in one warning line, see
        :func:`_turn_off`; tracking is then off) or earlier in this process.
    """
    uri = uri or tracking_uri()
    if _broken is not None:
        return None
    try:
        return _ensure_db(uri)
    except Exception as e:  # noqa: BLE001 - any failure of the store: the work goes on untracked
        _turn_off(uri, e)
        return None


@_warnings_not_errors()
def _ensure_db(uri: str) -> str:
    """:func:`ensure_db`, raising what the store raises."""
    check_reachable(uri)
    db = sqlite_path(uri)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = db.with_name(db.name + ".lock")
        with open(lock, "a", encoding="utf-8") as fh, _locked(fh):
            from mlflow.tracking import MlflowClient

            state = None
            if not db.exists() or db.stat().st_size == 0:
                # an empty file (sqlite's new store of a process stopped at once) holds nothing: replaced,
                # else the link below would keep it and MlflowClient migrate it in place
                _build_store(db, uri, replace=db.exists())
            else:
                state = _store_state(db)
                if state.unfinished and state.holds_nothing:
                    _build_store(db, uri, replace=True)
                    print(f"bafusion: note: the MLflow store {db} was half-built ({state.unfinished}: a schema "
                          "migration that was stopped, e.g. by an older bafusion that built stores in place); it "
                          "held no runs and was built again", file=sys.stderr, flush=True)
            try:
                # Creating the client's store runs the schema migrations when needed.
                client = MlflowClient(tracking_uri=uri)
            except Exception as e:
                if state is not None and state.unfinished:
                    raise _HalfBuiltStore(db, state, e) from e
                raise
            if client.get_experiment_by_name(EXPERIMENT) is None:
                with contextlib.suppress(Exception):  # another process may have won
                    _create_experiment(client, uri)
            mark_training_experiment(client)
            _anchor_artifact_location(client, db)
    return uri


#: How the temporary name of a store being built begins (``.mlflow.db.building-<pid>``),
#: beside the store.
_BUILDING = ".{name}.building-"
#: Tables of a fresh store that hold MLflow's own rows, not a user's records.
_BOOKKEEPING = frozenset({"alembic_version", "experiments", "experiment_tags", "workspaces"})


class _StoreState:
    """What :func:`_store_state` found in a sqlite store."""

    def __init__(self, unfinished: str | None, holds_nothing: bool, runs: int) -> None:
        self.unfinished, self.holds_nothing, self.runs = unfinished, holds_nothing, runs


class _HalfBuiltStore(Exception):
    """A sqlite store whose schema migration was stopped halfway, that holds records (runs)."""

    def __init__(self, db: Path, state: _StoreState, error: BaseException) -> None:
        said = _first_line(error)
        said = said if len(said) <= 200 else said[:200] + "..."
        runs = f"{state.runs} run{'s' if state.runs != 1 else ''}"
        super().__init__(
            f"a half-built store ({state.unfinished}: its schema migration was stopped halfway; MLflow: {said}); "
            f"it holds {runs}, so it is kept: move it aside (mv {db} {db}.half-built) and the next step makes a "
            "new store")


def _store_state(db: Path) -> _StoreState:
    """Whether the sqlite store ``db`` was left half-built by a stopped schema migration (the
    reason, else None), and whether it holds nothing of a user's (only MLflow's bookkeeping rows:
    no runs, no experiment but ``Default`` and ``bafusion``); it only reads.

    Half-built: a table ``_alembic_tmp_*`` (alembic's copy of a table being changed) is left,
    or the schema is not MLflow's latest and some of its tables are missing (a store begun but
    not finished; an older MLflow's complete store, which MLflow migrates, holds runs).
    A file that sqlite cannot read counts as neither (MLflow's own error says what it is).
    """
    import sqlite3

    try:
        # (not read-only: sqlite first rolls back what a stopped writer left in a journal)
        with contextlib.closing(sqlite3.connect(db, timeout=30)) as con:
            tables = {t for (t,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                      if not t.startswith("sqlite_")}
            version = (con.execute("SELECT version_num FROM alembic_version").fetchall()
                       if "alembic_version" in tables else [])
            unfinished = _unfinished(tables, [v for (v,) in version])
            if unfinished is None:  # (a complete store: its rows are not counted, at every step)
                return _StoreState(None, False, 0)
            filled = [t for t in tables - _BOOKKEEPING if con.execute(f'SELECT 1 FROM "{t}" LIMIT 1').fetchone()]
            runs = sum(con.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0]
                       for t in tables & {"runs", "_alembic_tmp_runs"})
            experiments = (set() if "experiments" not in tables else
                           {n for (n,) in con.execute("SELECT name FROM experiments")})
    except sqlite3.Error:
        return _StoreState(None, False, 0)
    return _StoreState(unfinished, not filled and experiments <= {"Default", EXPERIMENT}, runs)


def _unfinished(tables: set[str], version: list[str]) -> str | None:
    """Why a sqlite store with ``tables`` at the alembic ``version`` is half-built, else None."""
    leftovers = sorted(t for t in tables if t.startswith("_alembic_tmp_"))
    if leftovers:
        return f"alembic's table {leftovers[0]} is left"
    if not tables:
        return None
    from mlflow.store.db.base_sql_model import Base
    from mlflow.store.db.utils import _get_latest_schema_revision

    missing = sorted(set(Base.metadata.tables) - tables)
    if missing and version != [_get_latest_schema_revision()]:
        return f"its table {missing[0]} is missing"
    return None


def _build_store(db: Path, uri: str, replace: bool = False) -> None:
    """Create and migrate a new sqlite store under a temporary name beside ``db`` and rename it
    to ``db``, so that a stop leaves no half-built store (sqlite's schema changes are no one
    transaction, and MLflow runs about a hundred migrations); called under the store's lock.

    ``replace``: ``db`` is a half-built store that holds nothing, replaced; otherwise a store
    that another process (not taking the lock) made meanwhile is kept, and the new one dropped.
    What a stopped build left (its temporary files) is removed first.
    """
    from mlflow.tracking import MlflowClient

    prefix = _BUILDING.format(name=db.name)
    for old in db.parent.glob(prefix + "*"):
        with contextlib.suppress(OSError):
            old.unlink()
    tmp = db.with_name(f"{prefix}{os.getpid()}")
    tmp_uri = sqlite_uri(tmp)
    try:
        client = MlflowClient(tracking_uri=tmp_uri)
        if client.get_experiment_by_name(EXPERIMENT) is None:
            _create_experiment(client, uri)  # its artifacts beside the store's final name
        mark_training_experiment(client)
        _dispose(tmp_uri)
        if replace:
            for f in (db.with_name(db.name + x) for x in ("-journal", "-wal", "-shm")):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()  # else sqlite would "roll back" the old store's journal into the new one
            os.replace(tmp, db)
        else:
            try:
                os.link(tmp, db)  # never replaces a store that is there
            except FileExistsError:
                pass
            except OSError:  # a file system without hard links
                if not db.exists():
                    os.replace(tmp, db)
    finally:
        for f in (tmp, tmp.with_name(tmp.name + "-journal")):
            with contextlib.suppress(OSError):
                f.unlink()


def _dispose(uri: str) -> None:
    """Close MLflow's cached database connections of ``uri`` (a store renamed away)."""
    with contextlib.suppress(Exception):
        from mlflow.tracking._tracking_service.utils import _get_store

        engine = getattr(_get_store(uri), "engine", None)
        if engine is not None:
            engine.dispose()


def _relative_location(location: str | None) -> str | None:
    """The relative path of a local artifact location (``./mlruns/1``, ``file:mlruns/1``), else
    None (an absolute path or ``file:`` URI, another scheme such as ``s3:`` or ``mlflow-artifacts:``)."""
    if not location or re.match(r"^[A-Za-z]:[\\/]", location):  # None, or a Windows drive path
        return None
    parts = urlsplit(location)
    if parts.scheme == "file" and not parts.netloc:
        path = parts.path
    elif parts.scheme == "":
        path = location
    else:
        return None
    return None if Path(path).is_absolute() else path


def _anchor_artifact_location(client: Any, db: Path) -> None:
    """Give the ``bafusion`` experiment of the sqlite store ``db`` an absolute artifact location
    when an older MLflow left it relative (its default ``./mlruns/<id>``).

    MLflow resolves a relative location against the working directory of each process that
    logs, so every run scattered its artifacts and model in ``mlruns/`` of the folder it ran
    in. It is anchored to the store's folder (where such a store's first run began, as
    bafusion puts the store in the repository root; ``mlflow ui`` started there reads the old
    runs' artifacts at the same place); MLflow has no call that moves an experiment, so its row
    is updated. Said in one line; earlier runs keep their own locations.
    """
    exp = client.get_experiment_by_name(EXPERIMENT)
    rel = _relative_location(exp.artifact_location if exp is not None else None)
    if rel is None:
        return
    import sqlite3

    anchored = (db.resolve().parent / rel).resolve().as_uri()
    with contextlib.closing(sqlite3.connect(db, timeout=30)) as con, con:
        con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ? AND artifact_location = ?",
                    (anchored, int(exp.experiment_id), exp.artifact_location))
    print(f"bafusion: note: the MLflow experiment {EXPERIMENT!r} of {db} kept its artifacts at the relative path "
          f"{exp.artifact_location!r} (an older MLflow's default), which MLflow resolves against the folder each run "
          f"starts in, so they were scattered; new runs keep them in {anchored} (earlier runs keep theirs)",
          file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(fh: Any) -> Iterator[None]:
    """Hold an exclusive lock on the open file ``fh`` (waiting for it), released on leaving;
    ``fh`` None (a server store): no lock.

    The lock is :mod:`bafusion.atomic`'s (``flock``; on Windows, which has no ``fcntl``,
    ``msvcrt.locking``), so processes started together (parallel Snakemake jobs) are
    serialised on the sqlite store's creation and on finding a DVC invocation's parent run.
    Where the system has neither, no lock is taken: tracking works, but the experiment's
    creation may race (it tolerates losing that race) and two such stages at once may each
    open a parent run.
    """
    from bafusion import atomic

    if fh is None or (atomic.fcntl is None and atomic.msvcrt is None):
        yield
        return
    atomic._lock(fh, wait=True)
    try:
        yield
    finally:
        atomic._unlock(fh)


#: MLflow's experiment-kind tag: model training, so the UI opens on the runs table, not on
#: the GenAI "Traces" view.
EXPERIMENT_KIND = ("mlflow.experimentKind", "custom_model_development")


def mark_training_experiment(client: Any) -> None:
    """Tag the ``bafusion`` experiment as model training (once; a user's own kind is kept)."""
    exp = client.get_experiment_by_name(EXPERIMENT)
    if exp is not None and EXPERIMENT_KIND[0] not in (exp.tags or {}):
        with contextlib.suppress(Exception):
            client.set_experiment_tag(exp.experiment_id, *EXPERIMENT_KIND)


def git_commit(root: Path | None = None) -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root or repo_root(), capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


#: The tracked files whose uncommitted changes make a run's code differ from its commit
#: (:func:`git_dirty`): the package, the pipeline's rules and definitions. Not the files a run
#: itself writes or records otherwise (dvc.lock, metrics/, params.yaml: logged as params), nor
#: documentation and tests.
SOURCE_PATHS = ("src", "workflow", "Snakefile", "dvc.yaml", "pyproject.toml")


#: The tag that says whether a run's code had uncommitted changes (:func:`source_tags`).
DIRTY_TAG = "bafusion.git_dirty"
#: The tags of the bafusion code a run ran: its version and the digest of its sources
#: (:func:`source_tags`, :func:`bafusion.checkout.code_digest`).
VERSION_TAG = "bafusion.version"
CODE_DIGEST_TAG = "bafusion.code_digest"
#: The tags of the project a run ran in (its git commit, and whether its tracked source files had
#: uncommitted changes) when that is not bafusion's own checkout (:func:`source_tags`).
PROJECT_COMMIT_TAG = "project.git_commit"
PROJECT_DIRTY_TAG = "project.git_dirty"


def git_dirty(root: Path | None = None) -> bool | None:
    """Whether the checkout's tracked source files (:data:`SOURCE_PATHS`) have uncommitted
    changes, staged or not (untracked files are not looked at, so the data folders cost
    nothing); None outside a git checkout or when git fails. It takes no lock (``git
    --no-optional-locks``): stages running side by side do not contend for the index."""
    try:
        out = subprocess.run(
            ["git", "--no-optional-locks", "status", "--porcelain", "--untracked-files=no", "--", *SOURCE_PATHS],
            cwd=root or repo_root(), capture_output=True, text=True, timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(out.stdout.strip()) if out.returncode == 0 else None


class _NullRun:
    """Stands in for a run when tracking is off, so callers need no ``if``."""

    info = None

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        pass

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        pass

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        pass

    def set_tag(self, key: str, value: Any) -> None:
        pass

    def log_model(self, model: Any, name: str, input_example: Any = None,
                  tags: Mapping[str, Any] | None = None) -> None:
        pass

    def end_interrupted(self, run_id: str) -> None:
        pass

    def end_dead_runs(self) -> None:
        pass

    def runs_tagged(self, key: str, value: str) -> list[str]:
        return []


#: A failing call of a run is tried again this many times, after ``RETRY_BACKOFF_S`` seconds,
#: then twice that, ... (a sqlite store locked by another process for a moment, a disk full
#: for a moment, a server restarting), before tracking is turned off (:func:`_turn_off`).
RETRIES = 3
RETRY_BACKOFF_S = 0.5
#: Tags of a run whose tracking stopped before its end (:meth:`_Run.end`).
INCOMPLETE_TAG = "bafusion.incomplete"
#: The tags ``bafusion.process.<field>`` of a step's run name its process (:data:`PROCESS_FIELDS`, see
#: :func:`bafusion.atomic.process_identity`), so that a later step ends it ``KILLED`` once that
#: process is gone and the run still says ``RUNNING`` (:meth:`_Run.end_dead_runs`).
PROCESS_TAG = "bafusion.process"
PROCESS_FIELDS = ("host", "pid", "start", "pidns", "boot")
#: The tag of a run ended by :meth:`_Run.end_dead_runs`: the id of the run that ended it.
ENDED_BY_TAG = "ended_by_run_id"
#: Seconds :meth:`_Run.end_dead_runs` may spend in all: the runs not tried by then stay ``RUNNING``.
DEAD_RUNS_BUDGET_S = 60.0


def process_tags() -> dict[str, str]:
    """The tags :data:`PROCESS_TAG` ``.<field>`` that name this process on a run it holds ``RUNNING``."""
    from bafusion.atomic import process_identity

    return {f"{PROCESS_TAG}.{key}": value for key, value in process_identity().items()}


def _permanent(error: BaseException) -> bool:
    """A store's answer that trying again cannot change (a bad value, no such run)."""
    code = getattr(error, "error_code", None)
    return code in ("INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
                    "PERMISSION_DENIED", "UNAUTHENTICATED", "BAD_REQUEST", "INVALID_STATE")


#: The codes of an ``MlflowException`` of the store (its database, its disk, its server) that a
#: later try may not meet (no code: ``INTERNAL_ERROR``, also what the sqlite store raises for
#: "database is locked" or a full disk).
_STORE_ERROR_CODES = frozenset({"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "IO_ERROR", "REQUEST_LIMIT_EXCEEDED",
                                "RESOURCE_CONFLICT", "ABORTED", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED"})


def _of_module(error: BaseException, *modules: str) -> bool:
    return any(c.__module__.split(".")[0] in modules for c in type(error).__mro__)


def _retryable(error: BaseException) -> bool:
    """A failure of the store that trying again may mend: an ``OSError`` (a disk, a connection),
    a server that does not answer (:class:`Unreachable`), a database error of sqlite or
    SQLAlchemy, an ``MlflowException`` of :data:`_STORE_ERROR_CODES`. Not a warning made an
    error (in its causes either: MLflow wraps what its store's code raises), nor a bug's
    ``TypeError``, nor the store's final answers (:func:`_permanent`)."""
    seen: list[BaseException] = []
    e: BaseException | None = error
    while e is not None and len(seen) < 16 and all(e is not x for x in seen):
        if isinstance(e, Warning):
            return False
        seen.append(e)
        e = e.__cause__ or e.__context__
    if _permanent(error):
        return False
    if isinstance(error, (OSError, Unreachable)) or _of_module(error, "sqlite3", "sqlalchemy"):
        return True
    return _of_module(error, "mlflow") and getattr(error, "error_code", "INTERNAL_ERROR") in _STORE_ERROR_CODES


#: Tries again of a failing call while a stopped step ends its run (:func:`_ending_after_stop`):
#: the user waits for the stop (a second Ctrl-C is held meanwhile, a third stops at once).
STOPPED_RETRIES = 1

#: Per thread: ``ended`` is True while a step whose stop (Ctrl-C, SIGTERM) was raised ends its
#: run (:func:`_ending_after_stop`).
_stop_state = threading.local()


@contextlib.contextmanager
def _ending_after_stop() -> Iterator[None]:
    """While a step whose stop was raised ends its run (:func:`stage_run`): a failure of the
    store is that failure, not the stop's exception lost inside the store's code, so it is not
    raised as the stop again (:func:`_raise_lost_stop`): raised, it left the run's end undone and
    the run RUNNING. It is tried again :data:`STOPPED_RETRIES` times, not :data:`RETRIES`."""
    before = getattr(_stop_state, "ended", False)
    _stop_state.ended = True
    try:
        yield
    finally:
        _stop_state.ended = before


def _raise_lost_stop() -> None:
    """Raise the stop requested (:func:`bafusion.atomic.raise_if_stopped`): an exception of the
    store's code after a stop may be the stop's own, lost in it (see :mod:`bafusion.atomic`).
    Not while a stopped step ends its run (:func:`_ending_after_stop`): the stop was raised."""
    from bafusion.atomic import raise_if_stopped

    if not getattr(_stop_state, "ended", False):
        raise_if_stopped()


@_warnings_not_errors()
def _retried(uri: str, fn: Any, *args: Any, **kwargs: Any) -> None:
    """Call ``fn``; a failure of the store (:func:`_retryable`) is tried again :data:`RETRIES`
    times with a doubling wait (:data:`STOPPED_RETRIES` while a stopped step ends its run), then
    raised; any other is raised at once. A server is checked to accept a connection before each
    try (:func:`check_reachable`)."""
    retries = STOPPED_RETRIES if getattr(_stop_state, "ended", False) else RETRIES
    for attempt in range(retries + 1):
        try:
            check_reachable(uri)  # a server that is down: seconds, not MLflow's minutes of retries
            fn(*args, **kwargs)
            return
        except Exception as e:  # noqa: BLE001 - the store's failure: tried again, then raised
            _raise_lost_stop()
            if attempt == retries or not _retryable(e):
                raise
            time.sleep(RETRY_BACKOFF_S * 2**attempt)


class _Run:
    """A run of a working store. A call that fails is tried again a few times (:func:`_retried`);
    one that still fails turns tracking off (:func:`_turn_off`, one warning saying what the run
    misses from then on) and the later calls do nothing: the step goes on untracked. The end of
    the run says that it is incomplete, and marks it so in the store when it answers again
    (:meth:`end`)."""

    def __init__(self, client: Any, run_id: str, uri: str | None = None, name: str = "") -> None:
        self.client = client
        self.run_id = run_id
        self.uri = uri or tracking_uri()
        self.name = name
        #: What was not logged after the store failed: kind -> count.
        self.lost: dict[str, int] = {}
        #: When (UTC, ``HH:MM:SS``) the store failed during this run, else None.
        self.failed_at: str | None = None

    def _call(self, what: str, count: int, fn: Any, *args: Any, **kwargs: Any) -> None:
        """``fn(*args, **kwargs)`` tried again on failure; ``count`` of ``what`` (``metric``,
        ``artifact``, ...) are lost when it fails."""
        if _broken is not None:
            self.lost[what] = self.lost.get(what, 0) + count
            return
        try:
            _retried(self.uri, fn, *args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the store's failure: the work goes on untracked
            self.lost[what] = self.lost.get(what, 0) + count
            self.failed_at = time.strftime("%H:%M:%S UTC", time.gmtime())
            tries = (STOPPED_RETRIES if getattr(_stop_state, "ended", False) else RETRIES) + 1
            tried = f"still failing after {tries} tries" if _retryable(e) else "not a failure a retry mends"
            _turn_off(self.uri, e, lost=(f"{tried}, tracking is now off for the "
                                         f"rest of this process: the MLflow run {self.name!r} ({self.run_id}) "
                                         "misses every metric, tag, artifact and model logged from now on; "
                                         "the step goes on"))

    def log_metric(self, key: str, value: float, step: int | None = None) -> None:
        ts = int(time.time() * 1000)  # the same point when tried again
        self._call("metric", 1, self.client.log_metric, self.run_id, key, float(value), timestamp=ts, step=step or 0)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        batch = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items()]
        self._call("metric", len(batch), self.client.log_batch, self.run_id, metrics=batch)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        self._call("artifact", 1, self.client.log_artifact, self.run_id, str(path), artifact_path)

    def set_tag(self, key: str, value: Any) -> None:
        self._call("tag", 1, self.client.set_tag, self.run_id, key, str(value))

    def log_model(self, model: Any, name: str, input_example: Any = None,
                  tags: Mapping[str, Any] | None = None) -> None:
        """Log a torch net as an MLflow model of this run (see :func:`log_torch_model`)."""
        self._call("model", 1, log_torch_model, self.uri, self.run_id, model, name, input_example, tags)

    @_warnings_not_errors()
    def runs_tagged(self, key: str, value: str) -> list[str]:
        """The ids of the runs of this run's experiment, other than this one, whose tag ``key`` is
        ``value``, the newest first; FINISHED ones before the others. A lookup, never a reason to
        leave this run untracked: a store that fails it gives ``[]`` (no retries, tracking stays on)."""
        from bafusion.atomic import raise_if_stopped

        if _broken is not None or "'" in str(value):  # (a digest or an id: no quote to escape)
            return []
        try:
            check_reachable(self.uri)
            experiment = self.client.get_run(self.run_id).info.experiment_id
            runs = self.client.search_runs([experiment], filter_string=f"tags.`{key}` = '{value}'",
                                           order_by=["attributes.start_time DESC"], max_results=100)
        except Exception:  # noqa: BLE001 - a lookup: nothing found
            raise_if_stopped()
            return []
        runs = [r for r in runs if r.info.run_id != self.run_id]
        return [r.info.run_id for r in sorted(runs, key=lambda r: r.info.status != "FINISHED")]

    def end_interrupted(self, run_id: str) -> None:
        """End the run ``run_id`` of an interrupted step that this run resumes as ``KILLED``,
        when it is still ``RUNNING`` (SIGKILL, a lost machine: nothing ended it), and tag it
        ``resumed_by_run_id``. A run this store does not hold (another store) is left alone."""
        self._call("the interrupted run's end", 1, self._end_killed, run_id, "resumed_by_run_id")

    @_warnings_not_errors()
    def end_dead_runs(self) -> None:
        """End as ``KILLED`` the runs of this run's experiment that are still ``RUNNING`` though
        their process is known gone (:func:`bafusion.atomic.process_gone`, by the tags
        :data:`PROCESS_TAG` ``.host``, ``.pid``, ...: SIGKILL, the out-of-memory killer), and tag
        them :data:`ENDED_BY_TAG`; those of another host, PID namespace or boot, of a process
        that runs, or without the tags (an earlier version's) are left alone. A parent run
        (:func:`begin_invocation`) names its Snakemake process: killed, or stopped without its
        ``onerror``, it is ended alike.

        This is housekeeping of old runs, never a reason to leave this one untracked: each dead
        run is ended in its own try, once (no :data:`RETRIES`); those that fail (and a search
        that fails) are said in one warning line naming them, they stay ``RUNNING`` for a later
        step to end, and tracking stays on (no :func:`_turn_off`). The cleanup is bounded: a
        server is checked to accept a connection before each run (one that stopped costs one
        connect, not MLflow's minutes of retries per run), and after :data:`DEAD_RUNS_BUDGET_S`
        seconds in all it stops; the runs not tried are counted in the same line."""
        from bafusion.atomic import process_gone, raise_if_stopped

        if _broken is not None:
            return
        failed: list[str] = []
        deadline = time.monotonic() + DEAD_RUNS_BUDGET_S
        try:
            check_reachable(self.uri)
            experiment = self.client.get_run(self.run_id).info.experiment_id
            runs = self.client.search_runs([experiment], filter_string="attributes.status = 'RUNNING'",
                                           max_results=1000)
        except Exception as e:  # noqa: BLE001 - housekeeping: said below, this run goes on tracked
            raise_if_stopped()
            runs, failed = [], [f"the search for them failed: {_first_line(e)}"]
        dead: list[str] = []
        for run in runs:
            try:
                tags = run.data.tags
                named = {key: tags[f"{PROCESS_TAG}.{key}"] for key in PROCESS_FIELDS
                         if f"{PROCESS_TAG}.{key}" in tags}
                if run.info.run_id != self.run_id and named and process_gone(named):
                    dead.append(run.info.run_id)
            except Exception as e:  # noqa: BLE001 - housekeeping: said below, the others are ended
                raise_if_stopped()
                failed.append(f"{run.info.run_id} ({_first_line(e)})")
        for i, run_id in enumerate(dead):
            stop = ""
            if time.monotonic() > deadline:
                stop = f"the cleanup took more than {DEAD_RUNS_BUDGET_S:g} s"
            else:
                try:
                    check_reachable(self.uri)
                except Unreachable as e:
                    stop = f"the store stopped answering ({_first_line(e)})"
            if stop:
                rest = dead[i:]
                shown = ", ".join(rest[:5]) + (f" and {len(rest) - 5} more" if len(rest) > 5 else "")
                failed.append(f"{stop}, so {len(rest)} {'was' if len(rest) == 1 else 'were'} not tried ({shown})")
                break
            try:
                self._end_killed(run_id, ENDED_BY_TAG, ours=True)
            except Exception as e:  # noqa: BLE001 - housekeeping: said below, the others are ended
                raise_if_stopped()
                failed.append(f"{run_id} ({_first_line(e)})")
        if failed:
            print(f"bafusion: warning: MLflow tracking store {_shown(self.uri)}: could not end as KILLED the runs "
                  f"left RUNNING by processes that are gone: {'; '.join(failed)}; they stay RUNNING (a later step "
                  f"tries again); the MLflow run {self.name!r} ({self.run_id}) is tracked as usual",
                  file=sys.stderr, flush=True)

    def _end_killed(self, run_id: str, tag: str, ours: bool = False) -> None:
        """End the run ``run_id`` as ``KILLED`` when it is still ``RUNNING``, tagging it ``tag`` =
        this run's id; also tag it when this run ended it already (:meth:`end_dead_runs`). A run
        this store does not hold is left alone (unless ``ours``: a run its search found, whose
        failing read is the store's failure); the store's other failures are raised."""
        try:
            run = self.client.get_run(run_id)
        except Exception:  # noqa: BLE001 - not in this store (or gone): nothing to end
            if ours:
                raise
            return
        if run.info.status == "RUNNING" or run.data.tags.get(ENDED_BY_TAG) == self.run_id:
            self.client.set_tag(run_id, tag, self.run_id)  # first: a run ended untagged would say nothing
            if run.info.status == "RUNNING":
                self.client.set_terminated(run_id, status="KILLED")

    def end(self, t0: float, status: str) -> None:
        """Log the duration since ``t0`` (``time.perf_counter``) and end the run with ``status``.

        When the store failed during the run (tracking is off), a line on stderr says that the
        run is incomplete and what it misses, and one more round of tries ends it with status
        ``FAILED`` (a finished step's run is no complete record; ``KILLED`` stays) and the tags
        :data:`INCOMPLETE_TAG` ``true``, ``tracking_incomplete`` (the problem) and
        ``bafusion.step_status`` (the step's own status): a store that answers again (a lock
        released) would otherwise show the run RUNNING forever, or FINISHED with holes."""
        self.log_metric("duration_s", time.perf_counter() - t0)
        if _broken is None:
            self._call("the run's end", 1, self.client.set_terminated, self.run_id, status=status)
        if _broken is not None:
            self._close_incomplete(status, _broken)

    def _close_incomplete(self, status: str, problem: str) -> None:
        ended = "FAILED" if status == "FINISHED" else status
        try:
            for key, value in ((INCOMPLETE_TAG, "true"), ("tracking_incomplete", problem),
                               ("bafusion.step_status", status)):
                _retried(self.uri, self.client.set_tag, self.run_id, key, value)
            _retried(self.uri, self.client.set_terminated, self.run_id, status=ended)
            marked = f"marked {INCOMPLETE_TAG}=true, status {ended} (the step itself: {status})"
        except Exception:  # noqa: BLE001 - still failing: said below
            marked = f"the store still fails, so MLflow may show it RUNNING, without the tag {INCOMPLETE_TAG}=true"
        lost = ", ".join(what if what == "the run's end" else f"{n} {what}{'s' if n != 1 else ''}"
                         for what, n in self.lost.items())
        when = f" at {self.failed_at}" if self.failed_at else ""
        print(f"bafusion: warning: the MLflow run {self.name!r} ({self.run_id}) is incomplete: it misses "
              f"{lost or 'what was logged'} since the store failed{when}: {problem}; {marked}",
              file=sys.stderr, flush=True)


@_warnings_not_errors()
def _open_run(
    uri: str, stage: str, params: Mapping[str, Any] | None, tags: Mapping[str, Any] | None, run_name: str | None
) -> _Run:
    """Create the run of :func:`stage_run` in the store ``uri``, raising what the store raises."""
    from mlflow.entities import Param
    from mlflow.tracking import MlflowClient

    _ensure_db(uri)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    exp_id = exp.experiment_id if exp is not None else _create_experiment(client, uri)
    name = run_name or stage
    all_tags = {"stage": stage, "mlflow.runName": name, **source_tags(f"bafusion {stage}"), **process_tags()}
    for var in ("DVC_EXP_NAME", "DVC_STAGE"):
        if os.environ.get(var):
            all_tags[var.lower()] = os.environ[var]
    parent = os.environ.get(PARENT_ENV, "").strip()
    if parent:
        all_tags["mlflow.parentRunId"] = parent
    all_tags.update({k: str(v) for k, v in (tags or {}).items()})
    run = client.create_run(exp_id, tags=all_tags, run_name=name)
    run_id = run.info.run_id
    flat = flatten(params or {})
    items = [Param(k, spelled(v)) for k, v in flat.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, params=items[i : i + 100])
    return _Run(client, run_id, uri, name)


@contextlib.contextmanager
def stage_run(
    stage: str,
    params: Mapping[str, Any] | None = None,
    tags: Mapping[str, Any] | None = None,
    run_name: str | None = None,
) -> Iterator[Any]:
    """Log one pipeline step as an MLflow run: flattened params, tags, duration, status.

    Parameters
    ----------
    stage
        The step (``prepare``, ``train_initial``, ...), kept in the ``stage`` tag.
    params
        Nested settings, logged flattened (``{"a": {"b": 1}}`` -> ``a.b``).
    tags
        Extra tags.
    run_name
        The name shown in the UI, default ``stage`` (e.g. ``composite shard 2/4``).

    Yields an object with ``log_metric``/``log_metrics``/``log_artifact``/``set_tag``/``log_model``.
    The run is a child of ``$BAFUSION_PARENT_RUN`` when that is set (see :func:`begin_invocation`).
    Uses ``MlflowClient`` (not the fluent API) so nothing leaks between runs in one process.
    A store that fails, at the start or later, only warns: the step goes on untracked.
    """
    if not enabled():
        yield _NullRun()
        return
    uri = tracking_uri()
    try:
        handle = _open_run(uri, stage, params, tags, run_name)
    except Exception as e:  # noqa: BLE001 - the store's failure: the work goes on untracked
        _turn_off(uri, e)
        yield _NullRun()
        return
    t0 = time.perf_counter()
    try:
        handle.end_dead_runs()  # a SIGKILLed step's run said RUNNING for good
        yield handle
    except BaseException as e:
        # Ctrl-C, or SIGTERM turned into SystemExit by the CLI (bafusion.cli): the job was
        # stopped, not broken; either way the run does not stay RUNNING.
        killed = isinstance(e, (KeyboardInterrupt, SystemExit))
        with _ending_after_stop() if killed else contextlib.nullcontext():
            handle.end(t0, "KILLED" if killed else "FAILED")
        raise
    handle.end(t0, "FINISHED")


# --------------------------------------------------------------------------------------
# Source tags, logged models, and the parent run of one pipeline invocation


def source_tags(name: str, root: Path | None = None) -> dict[str, str]:
    """MLflow's own source tags (the git commit and a source name, shown by the UI) and the
    identity of the bafusion code that ran.

    The commit is the code's only when this bafusion runs from its own source checkout (an
    editable install in the repository, :func:`bafusion.checkout.source_checkout`): it is then
    that checkout's commit, whatever folder the run starts in. An installed bafusion (a wheel,
    ``pip install .``) is no commit's code; the project it runs in (``root``) is recorded under
    ``project.git_commit`` and ``project.git_dirty`` instead, also when that project is another
    git checkout than bafusion's.

    Parameters
    ----------
    name
        What ran (``bafusion train_initial``, ``snakemake all``, ``dvc exp run``).
    root
        The project the run belongs to; default: the one it runs in, the nearest folder at or
        above the working directory holding ``dvc.yaml`` or ``Snakefile`` (else the working
        directory). Not ``$DVC_ROOT`` (:func:`repo_root`, where the runs are stored): in the
        temporary copy a ``dvc exp run --temp``/``--queue`` runs in, DVC sets it to the
        workspace, whose commit and uncommitted changes are not the experiment's (a queued one
        runs after the workspace moved on); the copy is a git repository that DVC checks out at
        the experiment's baseline, the experiment's changes applied.

    Returns
    -------
    dict
        ``mlflow.source.name``, ``mlflow.source.type``, ``bafusion.version`` (the package's
        version) and ``bafusion.code_digest`` (:func:`bafusion.checkout.code_digest`: sha256 of
        the package's code). From bafusion's own git checkout: ``mlflow.source.git.commit``
        (also kept as ``git_commit``) and ``bafusion.git_dirty`` (``"true"`` when its tracked
        source files had uncommitted changes: the run's code is not the commit's,
        :func:`git_dirty`; else ``"false"``). From a project in another git checkout (or any,
        for an installed bafusion): ``project.git_commit`` and ``project.git_dirty``.
    """
    from bafusion._version import __version__
    from bafusion.checkout import code_digest, source_checkout

    tags = {"mlflow.source.name": name, "mlflow.source.type": "LOCAL",
            VERSION_TAG: __version__, CODE_DIGEST_TAG: code_digest()}
    checkout = source_checkout()
    own = _git_toplevel(checkout) if checkout is not None else None
    if own is not None and own == checkout:  # not a checkout without git inside another repo
        commit = git_commit(checkout)
        if commit:
            tags["mlflow.source.git.commit"] = commit
            tags["git_commit"] = commit
            dirty = git_dirty(checkout)
            if dirty is not None:
                tags[DIRTY_TAG] = "true" if dirty else "false"
    else:
        own = None
    project = root or _nearest_project() or Path.cwd().resolve()
    if own is None or _git_toplevel(project) != own:
        commit = git_commit(project)
        if commit:
            tags[PROJECT_COMMIT_TAG] = commit
            dirty = git_dirty(project)
            if dirty is not None:
                tags[PROJECT_DIRTY_TAG] = "true" if dirty else "false"
    return tags


def _git_toplevel(folder: Path) -> Path | None:
    """The top folder of the git work tree ``folder`` is in, resolved; None outside one."""
    try:
        out = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=folder, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    top = out.stdout.strip()
    return Path(top).resolve() if out.returncode == 0 and top else None


#: The tag of a training run (``train_<net>``) that holds the sha256 of the model file it wrote;
#: :func:`log_nets` finds the training run of a net by it.
MODEL_SHA256_TAG = "model.sha256"

#: The tag of a training run that says what its metrics' names mean, and its value: 2 since the
#: per-epoch series are ``epoch/val_acc``, ``epoch/train_loss``, ... and ``val_acc`` etc. the best
#: epoch's (``metrics/train_<net>.json``'s); older runs, without the tag, hold the per-epoch
#: series under ``val_acc`` etc. A search ``tags.`bafusion.metric_schema` = '2'`` keeps the runs
#: whose ``val_acc`` is the best epoch's.
METRIC_SCHEMA_TAG = "bafusion.metric_schema"
METRIC_SCHEMA = 2


def log_nets(run: Any, identity: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Tag the run of a step that fused (``fuse``, ``evaluate``) with the nets it used, so that a
    run (a Table 1 row) names the weights that made it, not only their path (the same
    ``data/models/initial.pt`` in every experiment, whatever weights it held).

    Parameters
    ----------
    run
        The step's run (:func:`stage_run`'s).
    identity
        Per role (``initial``, ``boundary``): ``file`` (as given, ``""`` for nets built in
        memory), ``sha256`` (of the file, else of the weights) and ``patch``, as
        :func:`bafusion.fusion.batch.model_identity` gives them.

    Returns
    -------
    dict
        The tags set: ``net.<role>.sha256``, ``net.<role>.patch``, ``net.<role>.file`` (for a
        file), ``model_dir`` (the folder of both files, resolved, when they share one) and
        ``net.<role>.train_run_id``: the training run of this store that wrote a file of that
        sha256 (its tag :data:`MODEL_SHA256_TAG`; the newest finished one), when there is one.
    """
    tags: dict[str, str] = {}
    files = []
    for role, ident in identity.items():
        tags[f"net.{role}.sha256"] = str(ident["sha256"])
        tags[f"net.{role}.patch"] = str(ident["patch"])
        if ident.get("file"):
            tags[f"net.{role}.file"] = str(ident["file"])
            files.append(Path(ident["file"]))
    folders = {f.resolve().parent for f in files}
    if files and len(folders) == 1:
        tags["model_dir"] = str(folders.pop())
    find = getattr(run, "runs_tagged", None)
    for role, ident in identity.items():
        found = find(MODEL_SHA256_TAG, str(ident["sha256"])) if find is not None else []
        if found:
            tags[f"net.{role}.train_run_id"] = found[0]
    for key, value in tags.items():
        run.set_tag(key, value)
    return tags


@_warnings_not_errors()
def log_torch_model(uri: str, run_id: str, model: Any, name: str, input_example: Any = None,
                    tags: Mapping[str, Any] | None = None) -> str | None:
    """Log ``model`` with ``mlflow.pytorch.log_model`` into the run ``run_id``, with the logged
    model's ``tags`` (e.g. the net, its sha256, the DVC experiment: else every logged model of a
    store is a bare ``initial_net``/``boundary_net``).

    The requirements are given (the installed torch), so MLflow infers nothing and needs no
    network; with an input example MLflow stores it and infers the signature from it. Loading
    (``mlflow.pytorch.load_model``) needs ``bafusion`` importable.

    Returns
    -------
    str or None
        The logged model's URI (``models:/<id>``).
    """
    import mlflow
    import mlflow.pytorch
    import torch

    mlflow.set_tracking_uri(uri)
    was_training = model.training
    model.eval()
    quiet = _PickleWarningFilter()
    logging.getLogger("mlflow.pytorch").addFilter(quiet)
    try:
        with mlflow.start_run(run_id=run_id, log_system_metrics=False):
            info = mlflow.pytorch.log_model(
                model,
                name=name,
                input_example=input_example,
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
                # The pickled module (bafusion.nets.model's class), not a torch.export program: an
                # exported program is fixed to the example's batch size of 1.
                serialization_format="pickle",
                tags={k: str(v) for k, v in (tags or {}).items()} or None,
            )
    finally:
        logging.getLogger("mlflow.pytorch").removeFilter(quiet)
        model.train(was_training)
    return getattr(info, "model_uri", None)


class _PickleWarningFilter(logging.Filter):
    """Drop mlflow.pytorch's warning that a pickled model can run code when it is loaded.

    It came on every training (twice per ``dvc repro``). The pickle is chosen on purpose (see
    :func:`log_torch_model`) and the README says what it means: load only runs you made. The
    project's own model files are plain ``state_dict`` files loaded with ``weights_only=True``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Saving pytorch model by Pickle")


def _proc_parent(pid: int) -> tuple[int, str] | None:
    """(parent pid, start time) of ``pid`` from /proc, or None where there is no /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), fields[19]


def _dvc_ancestor() -> str | None:
    """``<pid>-<start time>`` of the ``dvc`` process this one runs under (Linux), else None."""
    pid = os.getpid()
    for _ in range(32):
        info = _proc_parent(pid)
        if info is None:
            return None
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            argv = []
        args = [a.decode(errors="replace") for a in argv[:3]]
        if any(Path(a).name == "dvc" for a in args[:2]) or args[1:3] == ["-m", "dvc"]:
            start = _proc_parent(pid)
            return f"{pid}-{start[1] if start else ''}"
        pid = info[0]
        if pid <= 1:
            return None
    return None


def invocation(targets: str = "") -> tuple[str | None, str]:
    """The key and the name of the pipeline invocation this process belongs to.

    Under DVC (``$DVC_STAGE`` set) the key is shared by all stages of one ``dvc repro`` or
    ``dvc exp run``: the experiment's name and the ``dvc`` process. Otherwise (a Snakemake run)
    there is no key: each run opens its own parent.

    Returns
    -------
    (key or None, run name)
    """
    exp = os.environ.get("DVC_EXP_NAME", "").strip()
    if os.environ.get("DVC_STAGE"):
        proc = _dvc_ancestor()
        if exp:
            return f"exp:{exp}:{proc or os.environ.get('DVC_EXP_BASELINE_REV', '')}", f"dvc exp {exp}"
        return (f"dvc:{proc}" if proc else None), "dvc repro" if proc else f"dvc repro {os.environ['DVC_STAGE']}"
    return None, f"snakemake {targets}".strip()


def begin_invocation(config: Mapping[str, Any] | None = None, targets: str = "") -> str | None:
    """Open (or, under DVC, reopen) the parent run of this invocation; export its id.

    Called from Snakemake's ``onstart``. Sets ``$BAFUSION_PARENT_RUN`` so that every job's
    :func:`stage_run` becomes a nested child. A parent id already in the environment (set by
    the caller) is kept.

    Parameters
    ----------
    config
        The invocation's params (Snakemake's ``config`` = params.yaml), logged flattened.
    targets
        The Snakemake targets, for the run's name.

    Returns
    -------
    str or None
        The parent run's id; None when tracking is off, or the store failed (one warning line;
        tracking is then off, see :func:`_turn_off`).
    """
    if not enabled():
        return None
    uri = tracking_uri()
    try:
        return _begin_invocation(uri, config, targets)
    except Exception as e:  # noqa: BLE001 - the store's failure: the work goes on untracked
        _turn_off(uri, e)
        return None


@_warnings_not_errors()
def _begin_invocation(uri: str, config: Mapping[str, Any] | None, targets: str) -> str:
    """:func:`begin_invocation` with the store ``uri``, raising what the store raises."""
    from mlflow.entities import Param, RunStatus, RunTag
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    _ensure_db(uri)
    client = MlflowClient(tracking_uri=uri)
    inherited = os.environ.get(PARENT_ENV, "").strip()
    if inherited:
        try:
            client.get_run(inherited)
            return inherited
        except MlflowException:
            # A stale id from another database (e.g. a parent process's leftover): ignored.
            print(f"bafusion: ${PARENT_ENV}={inherited} is not a run of {uri}; opening a new parent run",
                  file=sys.stderr)
    exp_id = client.get_experiment_by_name(EXPERIMENT).experiment_id
    key, name = invocation(targets)
    run_id = None
    lock = _lock_path(uri)
    with open(lock, "a", encoding="utf-8") if lock else contextlib.nullcontext() as fh, _locked(fh):
        if key:
            found = client.search_runs(
                [exp_id], filter_string=f"tags.`{INVOCATION_TAG}` = '{key}'", max_results=1
            )
            if found:
                run_id = found[0].info.run_id
                # this process holds it RUNNING now (first: else a step would find the last
                # stage's Snakemake gone and end it, see _Run.end_dead_runs)
                client.log_batch(run_id, tags=[RunTag(k, v) for k, v in process_tags().items()])
                client.update_run(run_id, status=RunStatus.to_string(RunStatus.RUNNING))
        if run_id is None:
            tags = {PARENT_TAG: "1", "mlflow.runName": name, **source_tags(name), **process_tags()}
            if key:
                tags[INVOCATION_TAG] = key
            if os.environ.get("DVC_EXP_NAME"):
                tags["dvc_exp_name"] = os.environ["DVC_EXP_NAME"]
            run_id = client.create_run(exp_id, tags=tags, run_name=name).info.run_id
            items = [Param(k, spelled(v)) for k, v in flatten(config or {}).items()]
            for i in range(0, len(items), 100):
                client.log_batch(run_id, params=items[i : i + 100])
    os.environ[PARENT_ENV] = run_id
    return run_id


#: The stop signal (SIGINT, SIGTERM) this process received since :func:`watch_stop_signals`,
#: else None: :func:`end_invocation` then ends the parent run ``KILLED``, not ``FAILED``.
_stopped_by: int | None = None


def watch_stop_signals() -> None:
    """Note a SIGINT (Ctrl-C) or SIGTERM that this process receives from now on, handing it on
    to the handler it had, so that :func:`end_invocation` ends a stopped invocation's parent
    run ``KILLED`` as its stopped step's, not ``FAILED`` (a ``dvc exp run`` stopped with
    Ctrl-C or ``kill``). Called from Snakemake's ``onstart``, after Snakemake put its own
    handlers in place (its scheduler's ``SIGTERM``: finish the running jobs, then fail; Python's
    ``SIGINT``: ``KeyboardInterrupt``); both then fail the workflow, and Snakemake calls
    ``onerror``. A signal that is ignored (``SIG_IGN``: SIGINT of a background job) or has the
    default action (the process ends, no ``onerror``) is left alone, as is a call outside the
    main thread (where Python sets no handler)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(sig)
        if not callable(previous) or getattr(previous, "_bafusion_watch", False):
            continue

        def noted(signum: int, frame: Any, previous: Any = previous) -> Any:
            global _stopped_by
            _stopped_by = signum
            return previous(signum, frame)

        noted._bafusion_watch = True  # type: ignore[attr-defined]
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(sig, noted)


@_warnings_not_errors()
def end_invocation(ok: bool) -> None:
    """Close the parent run opened by :func:`begin_invocation` (Snakemake's onsuccess/onerror).

    ``ok`` False: ``KILLED`` when this process was stopped by SIGINT or SIGTERM since
    :func:`watch_stop_signals` (tagged ``bafusion.stopped_by``, the signal's name), else
    ``FAILED``. Under DVC the next stage reopens it, so after the last stage it stays FINISHED.
    """
    run_id = os.environ.get(PARENT_ENV)
    if not (enabled() and run_id):
        return
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri()
    try:
        check_reachable(uri)
        client = MlflowClient(tracking_uri=uri)
        if not ok and _stopped_by is not None:
            import signal

            client.set_tag(run_id, STOPPED_BY_TAG, signal.Signals(_stopped_by).name)
        client.set_terminated(run_id, status="FINISHED" if ok else "KILLED" if _stopped_by is not None else "FAILED")
    except MlflowException as e:  # the runs are a record of the work: never fail the work for them
        print(f"bafusion: could not close the MLflow parent run {run_id}: {str(e).splitlines()[0]}", file=sys.stderr)
    except Exception as e:  # noqa: BLE001 - the store's failure, likewise
        _turn_off(uri, e)


def _lock_path(uri: str) -> Path | None:
    db = sqlite_path(uri)
    if db is not None:
        return db.with_name(db.name + ".lock")
    return None
