"""``bafusion train``: argument parsing and the multi-process launch; the training is :mod:`bafusion.nets.train`."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from bafusion.atomic import clear_stop, stop_requested
from bafusion.cli.app import TRAIN_LAUNCHER_ENV, at_command_end
from bafusion.cli.common import add_threads_argument, nonempty_json, nonempty_path, nonempty_text, note_params_yaml_unread, seed_int
from bafusion.config import batch_split_problem, read_params
from bafusion.errors import READABLE_ERRORS, UserError
from bafusion.nets.train import (
    LOCK_HELD_ENV,
    NETS,
    Paths,
    TrainConfig,
    _saved_words,
    checkpoints_lock,
    default_paths,
    dist_from_env,
    resolve_nproc,
    train,
)
from bafusion.progress import Unstamped, fd_is_terminal
from bafusion.schema import maximum
from bafusion.threads import available_cores

# --------------------------------------------------------------------------------------
# The multi-process launch
# --------------------------------------------------------------------------------------
# ``bafusion train --nproc N`` (the command) starts a launcher, ``torch.distributed.run``
# (torchrun) in a process group of its own, which starts the N training processes (workers).
# The command holds the checkpoint folder's lock for them. When it is asked to stop (SIGTERM,
# Ctrl-C) it sends SIGTERM to the launcher, which stops its workers (SIGTERM: they stop as a
# single-process run does, writing nothing more); what is left after a grace time is killed.
# Killed itself (SIGKILL), the command takes the launcher with it, and the launcher its
# workers (Linux: PR_SET_PDEATHSIG). The launcher's own log lines and tracebacks are kept
# from stderr: a worker's error is said once, by the worker (the first process; the others
# exit quietly), and the command exits with that worker's status.

#: In the launcher's environment: the pid of the command (the launcher ends with it).
_PARENT_ENV = "BAFUSION_TRAIN_COMMAND_PID"
#: In the workers' environment: the pid of the launcher (the workers end with it).
_LAUNCHER_ENV = TRAIN_LAUNCHER_ENV
#: Exit status of a worker whose peer ended (its connection to it broke): said by the launcher.
_PEER_GONE = 3
#: Seconds the launcher is given to stop its workers before the command kills them all.
_STOP_GRACE = 40.0
#: ``python -c`` program of the launcher: its Python-level stderr (torchrun's log lines, the
#: traceback of a failed worker) is kept in memory; the workers write to the real one.
_LAUNCHER = ("import io, sys\n"
             "real, sys.stderr = sys.stderr, io.StringIO()\n"
             "try:\n"
             "    from bafusion.cli.train import _launcher\n"
             "except BaseException:\n"
             "    real.write(sys.stderr.getvalue())\n"
             "    raise\n"
             "sys.exit(_launcher(real, sys.argv[1:]))\n")


def _die_with_parent(parent: int) -> None:
    """Have the OS send this process SIGTERM when its parent ends, killed too (Linux; elsewhere
    nothing). ``parent`` is the pid the parent had: when it has already ended, the SIGTERM is
    sent now."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _launcher(stderr: TextIO, argv: list[str]) -> int:
    """The launcher process: torchrun with ``argv``, quiet; its exit status is the workers'
    (see :func:`_failure_status`), 128 + N when it was stopped by signal N."""
    log = sys.stderr
    _die_with_parent(int(os.environ[_PARENT_ENV]))
    os.environ[_LAUNCHER_ENV] = str(os.getpid())
    try:
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import main as torchrun

        try:
            torchrun(argv)
        except ChildFailedError as e:
            return _failure_status(e.failures, stderr)
        except SignalException as e:  # asked to stop: it stopped its workers
            return 128 + int(e.sigval)
    except BaseException:  # noqa: BLE001 - torchrun's own failure: say all it said
        stderr.write(log.getvalue() if isinstance(log, io.StringIO) else "")
        traceback.print_exc(file=stderr)
        return 1
    return 0


#: A worker's exit status when it was asked to stop (bafusion.cli.app: Ctrl-C, SIGTERM, SIGHUP):
#: 128 + the signal, not an error of its own.
_STOPPED = tuple(128 + getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


def _failure_status(failures: dict[int, Any], stderr: TextIO) -> int:
    """The command's exit status for the failed workers ``failures`` (rank -> torchrun's
    ``ProcessFailure``): a worker's own error (it said it) wins; else a worker ended by a
    signal (killed, or stopped by someone else than the command) is said in one line; the
    others ended because of it (their peer went, or torchrun stopped them)."""
    by_rank = sorted(failures.items())
    for _, f in by_rank:
        if f.exitcode > 0 and f.exitcode not in (_PEER_GONE, *_STOPPED):
            return int(f.exitcode)
    # killed (torchrun stops the others with SIGTERM: a 143 or -15 is more often its doing)
    stops = (-signal.SIGTERM, *_STOPPED)
    ended = ([(f.timestamp, rank, f) for rank, f in by_rank if f.exitcode < 0 and f.exitcode not in stops]
             or [(f.timestamp, rank, f) for rank, f in by_rank if f.exitcode != _PEER_GONE]
             or [(f.timestamp, rank, f) for rank, f in by_rank])
    _, rank, f = min(ended, key=lambda t: (t[0], t[1]))
    signum = -f.exitcode if f.exitcode < 0 else f.exitcode - 128 if f.exitcode > 128 else None
    try:
        how = f"by {signal.Signals(signum).name}" if signum else f"with status {f.exitcode}"
    except ValueError:
        how = f"by signal {signum}"
    print(f"bafusion train: error: a training process (rank {rank}, pid {f.pid}) ended {how}; the others "
          "were stopped (run the command again to resume from the last checkpoint)", file=stderr)
    return 128 + signum if signum else int(f.exitcode)


def _launch(cmd: list[str], env: dict[str, str]) -> int:
    """Run the launcher ``cmd`` in a process group of its own; stop it (and what is left of
    the group) when the command is stopped. Its exit status."""
    proc = subprocess.Popen(cmd, env={**env, _PARENT_ENV: str(os.getpid())}, start_new_session=True)
    try:
        return proc.wait()
    except BaseException:  # SIGTERM, SIGINT (cli.app's handlers raise): stop the workers
        try:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=_STOP_GRACE)
        except (subprocess.TimeoutExpired, KeyboardInterrupt, SystemExit):  # no time to wait: kill
            pass
        finally:
            try:
                os.killpg(proc.pid, signal.SIGKILL)  # all of the group that is still there
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        raise


def _peer_gone(e: BaseException) -> bool:
    """Whether ``e`` (in a worker) says that another process of the run has gone."""
    import torch.distributed

    text = str(e)
    return (isinstance(e, getattr(torch.distributed, "DistError", ())) or "Connection reset by peer" in text
            or "Connection closed by peer" in text or "Broken pipe" in text)


def _run_worker(args: argparse.Namespace, cfg: TrainConfig) -> int:
    """One process of a multi-process run started by the command: it ends with the launcher,
    says a user error only as the first process (the others see the same inputs), and ends
    quietly when stopped or when another process went (the command says so)."""
    _die_with_parent(int(os.environ[_LAUNCHER_ENV]))
    try:
        return _train_cli(args, cfg)
    except UserError:
        if dist_from_env().main:
            raise
        raise SystemExit(2) from None
    except BaseException as e:
        signum = stop_requested()
        if signum is not None:  # stopped: the command says it
            clear_stop()
            raise SystemExit(128 + signum) from None
        if isinstance(e, Exception) and _peer_gone(e):
            raise SystemExit(_PEER_GONE) from None
        raise

# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train", help="train the initial or the boundary net on a patch set",
        description="Train the initial net (on data/patches/initial.h5) or the boundary net (on "
                    "data/patches/boundary.h5). An interrupted run resumes from --checkpoints/last.pt (for the "
                    "same parameters and patch set); the checkpoint of a finished run (one that wrote its model) "
                    "is not resumed: the training starts from scratch, unless the run's outputs are missing or "
                    "damaged (deleted after a kill, or by snakemake -R) or were written under another train.keep: "
                    "then its model (the weights train.keep asks for) is written again from "
                    "last.pt without training, unless this run has another device type, CPU thread count, "
                    "train.compile or torch version, which change the weights (--no-resume trains again). An interrupted run's "
                    "checkpoint of other parameters is refused (give another --checkpoints, or --no-resume or "
                    "--restart-if-changed to replace it). The checkpoints, metrics and per-epoch CSV go beside --out unless --out is "
                    "the pipeline's data/models/<net>.pt, so a run by hand in a pipeline project leaves the "
                    "pipeline's resume state and metrics alone.")
    p.add_argument("--net", required=True, choices=NETS,
                   help="which net to train: initial (on the patches' initial.h5) or boundary (on boundary.h5)")
    p.add_argument("--patches", required=True, help="HDF5 patch set (from the 'patches' step)")
    p.add_argument("-o", "--output", "--out", dest="out", type=nonempty_path, required=True, help="model file to write (.pt, with a .json beside it)")
    p.add_argument("--params-file", "--params", dest="params", type=nonempty_path, default=None, metavar="FILE",
                   help="parameter file (params.yaml)")
    p.add_argument("--params-json", type=nonempty_json, default=None, help="parameters as a JSON object (wins over --params)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one parameter, e.g. --set train.epochs=2 (repeatable)")
    p.add_argument("--checkpoints", type=nonempty_path, default=None,
                   help="checkpoint folder (default: beside --out, <out stem>.checkpoints/; for --out "
                        "data/models/<net>.pt, the pipeline's data/checkpoints/<net>)")
    p.add_argument("--report", "--metrics", dest="metrics", type=nonempty_path, default=None, metavar="FILE",
                   help="metrics JSON, a DVC metrics file as fuse-set's and evaluate's --report (default: "
                        "<out stem>.metrics.json beside --out; for --out data/models/<net>.pt, "
                        "metrics/train_<net>.json)")
    p.add_argument("--plots", type=nonempty_path, default=None,
                   help="per-epoch CSV (default: <out stem>.epochs.csv beside --out; for --out "
                        "data/models/<net>.pt, metrics/plots/train_<net>.csv)")
    p.add_argument("--device", type=nonempty_text, default=None, help="override train.device (auto, cpu, cuda, cuda:N or mps)")
    p.add_argument("--seed", type=seed_int, default=None,
                   help="override seed, the seed of the weights' initialisation, the sample order and the "
                        "augmentation (default: the parameters' seed, else 0), e.g. for the members of an ensemble")
    add_threads_argument(p, "torch CPU threads per process", "train.threads",
                         zero="torch's default: all cores, at most those it may use")
    p.add_argument("--nproc", default=None, help="override train.nproc (processes; 'auto' = number of GPUs)")
    p.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint and start afresh")
    p.add_argument("--restart-if-changed", action="store_true",
                   help="resume a checkpoint of the same parameters and patch set, and start afresh over one of "
                        "others (the pipeline's own training, --out data/models/<net>.pt with the checkpoints "
                        "in data/checkpoints/<net>, does so always, so that a parameter edit retrains); "
                        "without it a run's checkpoint of other parameters is refused, not replaced")
    p.add_argument("--no-progress", "--quiet", dest="no_progress", action="store_true", help="no progress bars")
    p.add_argument("--log", type=nonempty_path, default=None, metavar="FILE",
                   help="also write what the command prints (stdout, stderr) to FILE, emptied and opened only "
                        "once the checkpoint folder's lock is held: a second training refused by that lock "
                        "leaves the running one's log alone (`... 2>&1 | tee FILE` emptied it first). Should "
                        "FILE be removed meanwhile (Snakemake removes a job's log before it runs, a duplicate "
                        "job's too), it is written again whole at the next line (the pipeline's rules use it)")
    p.set_defaults(func=run_cli)

    q = subparsers.add_parser(
        "ensemble", help="join trained nets into one net that averages their logits",
        description="Join two or more trained nets of one architecture and patch side (e.g. initial nets "
                    "trained from other seeds or data) into one model file whose logits are the mean of "
                    "theirs (bafusion.nets.model.ensemble: grouped convolutions; 2.6x the trunk time of one net "
                    "for two members on a CPU, BENCHMARKS.md). Use it as --initial or as initial.pt of a model folder.")
    q.add_argument("members", nargs="+", type=nonempty_path, help="model files (.pt with their .json)")
    q.add_argument("-o", "--output", "--out", dest="out", type=nonempty_path, required=True, help="model file to write (.pt, with a .json beside it)")
    q.set_defaults(func=run_ensemble)


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    note_params_yaml_unread("train", "--params", args.params, args.params_json, rest="any --set")
    params = read_params(args.params, [("--params-json", args.params_json, None)], args.overrides)
    cfg = TrainConfig.from_params(params, args.net)
    if args.device is not None:
        cfg.set_by_option("device", args.device, "--device")
    if args.seed is not None:
        cfg.set_by_option("seed", args.seed, "--seed")
    if args.threads is not None:
        if not 0 <= args.threads <= maximum("train.threads"):
            raise UserError(f"--threads {args.threads}: give 0 (all cores) or a positive number of CPU threads, at "
                            f"most {maximum('train.threads')}")
        cfg.set_by_option("threads", int(args.threads), "--threads")
    if args.nproc is not None:
        cfg.set_by_option("nproc", args.nproc, "--nproc")
    return cfg


def _late_milestones(cfg: TrainConfig) -> str:
    """The milestones the learning rate never reaches (at or after the last epoch), said as the
    pipeline's params check says them, or "" (a short run of the paper preset's 80/120/160/180
    trains at its first rate throughout)."""
    late = [m for m in cfg.milestones if m >= cfg.epochs]
    if not late:
        return ""
    return (f"{cfg.key('milestones')}: {', '.join(map(str, late))} not before the last epoch "
            f"({cfg.key('epochs')}: {cfg.epochs}): the learning rate never drops there")


def _relaunch_argv(args: argparse.Namespace, nproc: int, threads: int) -> list[str]:
    # (No --nproc: the children see WORLD_SIZE and never re-launch; and torchrun's argument
    # parser would take "--nproc" for an abbreviation of its own --nproc-per-node.)
    argv = ["train", "--net", args.net, "--patches", args.patches, "--out", args.out]
    for opt in ("params", "params_json", "checkpoints", "metrics", "plots", "device", "seed"):
        v = getattr(args, opt)
        if v is not None:
            argv += [f"--{opt.replace('_', '-')}", str(v)]
    if threads > 0:  # the threads are shared by the processes
        argv += ["--threads", str(max(1, threads // nproc))]
    for o in args.overrides:
        argv += ["--set", o]
    if args.no_resume:
        argv.append("--no-resume")
    if args.restart_if_changed:
        argv.append("--restart-if-changed")
    if args.no_progress:
        argv.append("--no-progress")
    return argv


#: How much earlier than the run's start a last.pt's time may read and still be this run's: file
#: systems keep times at coarser steps (2 s on FAT) and from a coarser clock than time.time().
_MTIME_SLACK_S = 2.0


def _resume_advice(args: argparse.Namespace, started: float, run: dict[str, Any] | None = None) -> str:
    """How to continue a stopped training (begun at time ``started``): from its checkpoint, when
    a rerun resumes one. With ``--no-resume`` only a last.pt that this run wrote (an older run's
    is the one it replaces); never a finished run's (what a rerun does beside it:
    :func:`_finished_rerun`); nor an older run's of other parameters, another patch set or other
    training code (``run``: this run's ``cfg`` and ``nproc``, once known; :func:`_other_run` says
    which), which a rerun replaces
    (``--restart-if-changed``, the pipeline's own training) or refuses."""
    paths = _paths(args)
    last = paths.checkpoints / "last.pt"
    try:
        ours = last.stat().st_mtime >= started - _MTIME_SLACK_S
    except OSError:  # none
        ours = None
    if ours is False and not args.no_resume and not _finished(last) and _same_run(args, last, run or {}) is False:
        other = _other_run(args, last, run or {})
        if args.restart_if_changed or _pipeline_training(args.net, paths):
            return (f"rerun the same command: no checkpoint was saved yet by this run, so it starts afresh "
                    f"(over {last}, {other})")
        return (f"{last} is {other}, and the same command refuses it: pass "
                "--checkpoints DIR for a separate training, or --restart-if-changed to replace it")
    if ours is not None and (ours or not args.no_resume) and not _finished(last):
        again = "rerun it without --no-resume" if args.no_resume else "rerun the same command"
        return f"{again}: it resumes from {last}"
    if ours and _finished(last):  # stopped after the outputs were written (MLflow's end, the exit)
        return (f"the run had finished ({last} says so): should its outputs be gone, rerun the same command: "
                "it writes the model again from it, without training")
    if ours is False and not args.no_resume and _finished(last) and _same_run(args, last, run or {}) is not False:
        return _finished_rerun(args, last, run or {})
    return "rerun the same command: no checkpoint was saved yet by this run, so it starts afresh"


def _finished_rerun(args: argparse.Namespace, last: Path, run: dict[str, Any]) -> str:
    """What a rerun does beside an older finished run's ``last`` (of this run's fingerprint, or
    one not known yet: ``run`` as for :func:`_same_run`): it writes that run's model again
    without training where its outputs are missing, replaced by another training's model
    (:func:`bafusion.nets.train._written_by_another`) or only ``train.keep`` differs (unless a
    setting that changes the weights differs: device type, CPU threads, ``compile``, torch
    version, see :func:`bafusion.nets.train._not_restorable`), else trains from scratch."""
    unknown = (f"rerun the same command: no checkpoint was saved yet by this run, so it trains from scratch, or, if "
               f"{last} is a finished run of the same parameters and settings whose outputs are missing or were "
               "written under another train.keep, writes that run's model again without training")
    if "cfg" not in run:  # stopped before the parameters were read
        return unknown
    try:
        from bafusion.nets.train import _keep_changed, _outputs_missing, _written_by_another, load_checkpoint

        ck = load_checkpoint(last)
        keep, missing = _keep_changed(ck, run["cfg"], _paths(args)), _outputs_missing(_paths(args))
        foreign = _written_by_another(ck, _paths(args))
    except Exception:  # noqa: BLE001 - advice only
        return unknown
    if keep or missing or foreign:
        why = keep or foreign or "its outputs are missing"
        return (f"rerun the same command: it writes the model of the finished run in {last} again without training "
                f"({why}), unless the device type, CPU threads, compile or torch version differ from that run's "
                "(then it trains from scratch)")
    return (f"rerun the same command: no checkpoint was saved yet by this run, so it trains from scratch ({last} is a "
            "finished run's, its outputs in place)")


def _checkpoint_state(args: argparse.Namespace, started: float, run: dict[str, Any] | None = None) -> str:
    """How far the checkpoint of ``args``' training (begun at time ``started``) got,
    ``" (2 epoch(s) done, step 96)"``, for the line that says the run stopped, after
    :func:`_resume_advice`: of a last.pt that this run wrote, or that a rerun resumes from. ``""``
    when there is none, it cannot be read, or it is an older run's that a rerun does not resume
    (a finished run's, one that ``--no-resume`` replaces, or one of another fingerprint: ``run``
    as for :func:`_same_run`): its epochs are not what a rerun goes on from."""
    last = _paths(args).checkpoints / "last.pt"
    try:
        ours = last.stat().st_mtime >= started - _MTIME_SLACK_S
    except OSError:  # none
        return ""
    if not ours and (args.no_resume or _finished(last) or _same_run(args, last, run or {}) is False):
        return ""
    try:
        from bafusion.nets.train import load_checkpoint

        ck = load_checkpoint(last)
        return f" ({int(ck['epoch'])} epoch(s) done, step {int(ck['global_step'])})"
    except Exception:  # noqa: BLE001 - advice only
        return ""


def _same_run(args: argparse.Namespace, last: Path, run: dict[str, Any]) -> bool | None:
    """Whether the checkpoint ``last`` is of this run's parameters, patch set and number of
    processes (its fingerprint, as :func:`bafusion.nets.train.train` compares it); ``None``
    when unknown (stopped before the parameters were read, or ``last`` unreadable)."""
    if "cfg" not in run or "nproc" not in run:
        return None
    try:
        from bafusion.nets.train import fingerprint, load_checkpoint

        return bool(load_checkpoint(last).get("fingerprint") ==
                    fingerprint(run["cfg"], args.net, Path(args.patches), run["nproc"]))
    except Exception:  # noqa: BLE001 - advice only
        return None


def _other_run(args: argparse.Namespace, last: Path, run: dict[str, Any]) -> str:
    """What the checkpoint ``last``, of another fingerprint than this run's (:func:`_same_run`),
    is of, as :func:`bafusion.nets.train.train` refuses it: "of a run with 1 process(es); this
    run has 2 (...)" when only the number of processes differs; "of other training code (...)"
    when the code alone changed (``_what_changed`` says :data:`~bafusion.nets.train.CODE_CHANGED`:
    bafusion upgraded or edited); else "of other parameters or another patch set (<what
    changed>)" (no "what" where the checkpoint cannot be read)."""
    try:
        from bafusion.nets.train import (
            CODE_CHANGED,
            _other_world_size,
            _processes_differ,
            _what_changed,
            load_checkpoint,
            patches_digest,
            training_code_digest,
        )

        ck = load_checkpoint(last)
        patches = Path(args.patches)
        ck_world = _other_world_size(ck, run["cfg"], args.net, patches, run["nproc"])
        if ck_world is not None:
            return f"of {_processes_differ(ck_world, run['nproc'])}"
        what = _what_changed(ck, run["cfg"], args.net, patches_digest(patches), code=training_code_digest())
        if what == CODE_CHANGED:
            return f"of other training code ({CODE_CHANGED}: bafusion was upgraded or edited)"
        return f"of other parameters or another patch set ({what})"
    except Exception:  # noqa: BLE001 - advice only
        pass
    return "of other parameters or another patch set"


def _finished(last: Path) -> bool:
    """Whether the checkpoint ``last`` is a finished run's (not resumed); ``False`` when unreadable."""
    try:
        from bafusion.nets.train import load_checkpoint

        return bool(load_checkpoint(last).get("finished"))
    except Exception:  # noqa: BLE001 - advice only
        return False


def run_cli(args: argparse.Namespace, run: dict[str, Any] | None = None) -> int:
    from bafusion.cli.app import on_stop_say

    # what the stop advice needs to know of this run, once known (--log's call shares it)
    run = {} if run is None else run
    if "WORLD_SIZE" not in os.environ or _LAUNCHER_ENV not in os.environ:  # the command, not a worker it started
        started = time.time()
        on_stop_say(lambda: _resume_advice(args, started, run))
    if getattr(args, "log", None) and "WORLD_SIZE" not in os.environ:  # the command, not a worker it started
        with _locked_with_log(args) as copy:
            args.log = None
            try:
                with copy.rescuing():
                    rc = run_cli(args, run)
            except BrokenPipeError:  # the console's reader gone (`2>&1 | head -1`): status 141, said in the log
                copy.say_reader_gone(f"{_resume_advice(args, started, run)}{_checkpoint_state(args, started, run)}")
                raise
            copy.end_stdout()
            # as every command that writes files: its lines lost (kept in the log here), status 2
            return 2 if rc == 0 and copy.stdout_failed is not None else rc
    cfg = _config_from_args(args)
    if Path(args.out).suffix != ".pt":
        # the description goes to <out>.json: with --out X.json it overwrote the weights
        raise UserError(f"--out {args.out}: give the model file a .pt suffix (its description is written "
                        "beside it as .json)")
    if "WORLD_SIZE" not in os.environ and not _pipeline_training(args.net, _paths(args)):
        # the pipeline's params check says it before the jobs run (bafusion.cli.params_check)
        late = _late_milestones(cfg)
        if late:
            print(f"bafusion train: warning: {late}", file=sys.stderr)
    nproc = resolve_nproc(cfg.nproc, cfg.device, cfg.key("nproc"))
    run.update(cfg=cfg, nproc=int(os.environ.get("WORLD_SIZE") or nproc))  # the processes a run has
    problem = batch_split_problem(cfg.key("batch"), cfg.batch, cfg.key("nproc"), cfg.nproc, nproc)
    if problem:  # checked by each child too, after torchrun started them
        raise UserError(problem)
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        # Re-launch under torchrun; the children see WORLD_SIZE and train.
        cmd = [sys.executable, "-c", _LAUNCHER, "--standalone", f"--nproc-per-node={nproc}",
               "-m", "bafusion.cli", *_relaunch_argv(args, nproc, cfg.threads)]
        env = dict(os.environ)
        # train.threads 0 (all cores): the cores this process may run on, shared by the processes
        # (bafusion.threads.available_cores: the affinity mask, at most the cgroup's CPU quota, as
        # fuse's threads; os.cpu_count() counted the machine's cores, 32 a process for 2 processes in a
        # container limited to 4 CPUs of a 64-core machine, each throttled)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (cfg.threads or available_cores()) // nproc)))
        checkpoints = _paths(args).checkpoints
        held = os.environ.get(LOCK_HELD_ENV) == str(checkpoints.resolve())  # by --log's (_locked_with_log)
        with checkpoints_lock(checkpoints) if not held else contextlib.nullcontext():
            # held for the processes, and ends with the command
            env[LOCK_HELD_ENV] = str(checkpoints.resolve())
            return _launch(cmd, env)
    if "WORLD_SIZE" in os.environ:
        cfg.nproc = int(os.environ["WORLD_SIZE"])
        if _LAUNCHER_ENV in os.environ:
            return _run_worker(args, cfg)
    return _train_cli(args, cfg)


@contextlib.contextmanager
def _locked_with_log(args: argparse.Namespace) -> Iterator[_LogCopy]:
    """Hold the checkpoint folder's lock (:func:`~bafusion.nets.train.checkpoints_lock`), and
    then only open ``--log`` and copy the command's output into it (:class:`_LogCopy`): a second
    training refused by the lock never touches the running one's log. The lock is marked held
    (:data:`~bafusion.nets.train.LOCK_HELD_ENV`) for the training and its processes, which take
    it no more."""
    checkpoints = _paths(args).checkpoints
    before = os.environ.get(LOCK_HELD_ENV)
    with checkpoints_lock(checkpoints):
        copy = _LogCopy(Path(args.log))
        copy.start()
        # the copy ends once the command has said how it ended: its error line too in the log, as
        # under `2>&1 | tee` (at the end of this block where no bafusion.cli.main runs)
        later = at_command_end(copy.stop)
        try:
            os.environ[LOCK_HELD_ENV] = str(checkpoints.resolve())
            yield copy
        finally:
            if not later:
                copy.stop()
            if before is None:
                os.environ.pop(LOCK_HELD_ENV, None)
            else:
                os.environ[LOCK_HELD_ENV] = before


class _LogCopy:
    """Copy what this process and the processes it starts write to file descriptors 1 and 2 into
    the log ``path`` as well (as ``2>&1 | tee`` did), from :meth:`start` to :meth:`stop`: each
    goes through a pipe that a thread copies to where it went before and to the log.

    The log is emptied by :meth:`start`, not before. Should its path be removed meanwhile
    (Snakemake removes a job's log before running it, that of a duplicate job refused by the lock
    too), it is written again whole, from what the open file holds, at the next output and at
    :meth:`stop`; a file put at the path by another is left alone. Should the log fail (a
    full disk) it is said once on stderr, and the output goes on to where it went. Should the
    reader of the standard output or error go away (``| head -1``), the copy of that stream
    ends there (what was on its way is still logged), so that the command's next write to it
    fails as it would without the copy: the command stops with 128 + SIGPIPE, its checkpoint
    kept; the line of that write to stderr is logged too (:meth:`rescuing`), and a last line
    says why the run stopped (:meth:`say_reader_gone`). Should the
    standard output fail (``> /dev/full``; not a reader gone) it is said once on stderr, as for
    every command that writes files, and its lines go on to the log only
    (:attr:`stdout_failed`, which makes the status 2). A closed
    standard output (``>&-``: ``sys.stdout`` is ``None``, descriptor 1 /dev/null) gets a stream
    on the copy meanwhile, so that what the command prints there is in the log too."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lock = threading.Lock()
        self.fh: Any = None
        self.ident: tuple[int, int] | None = None
        self.failed = False
        self.saved: dict[int, int] = {}
        self.threads: dict[int, threading.Thread] = {}
        #: The first failed write of the standard output (not a reader gone), else None.
        self.stdout_failed: OSError | None = None
        #: The descriptors (1, 2) whose reader went away (``| head -1``).
        self.gone: set[int] = set()
        self.stdout: Any = None  # the stream given to a closed standard output, from start to stop

    def start(self) -> None:
        """Empty and open the log, and copy the output into it from now on."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.fh = open(self.path, "w+b")  # noqa: SIM115 - closed by stop()
        except OSError as e:
            raise UserError(f"{self.path}: cannot write the log: {e.strerror or e}") from e
        st = os.fstat(self.fh.fileno())
        self.ident = (st.st_dev, st.st_ino)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, ValueError, OSError):
                stream.flush()
        try:
            for fd in (1, 2):
                self.saved[fd] = os.dup(fd)
                r, w = os.pipe()
                os.dup2(w, fd)
                os.close(w)
                t = threading.Thread(target=self._pump, args=(r, self.saved[fd], fd), daemon=True,
                                     name=f"bafusion-log-{fd}")
                t.start()
                self.threads[fd] = t
            if sys.stdout is None:  # closed (>&-): its lines went nowhere, the log's copy too
                self.stdout = open(1, "w", encoding=getattr(sys.stderr, "encoding", None) or "utf-8",  # noqa: SIM115
                                   errors=READABLE_ERRORS, buffering=1, closefd=False)
                sys.stdout = self.stdout
        except BaseException:
            self.stop()
            raise

    @contextlib.contextmanager
    def rescuing(self) -> Iterator[None]:
        """Have ``sys.stderr`` put in the log the line whose write failed because the reader of
        the console went away (:class:`_Rescued`): that line, the training's last (its progress
        and epochs' lines go to stderr), was missing from the log. Standard output, written at
        the end only, is left as it is."""
        proxy = _Rescued(sys.stderr, self) if sys.stderr is not None else None
        if proxy is not None:
            sys.stderr = proxy  # type: ignore[assignment]
        try:
            yield
        finally:
            if proxy is not None and sys.stderr is proxy:
                sys.stderr = proxy.stream

    def log_text(self, text: str) -> None:
        """Write ``text`` to the log only (the console's reader is gone)."""
        with self.lock:
            self._write_log(text.encode(errors=READABLE_ERRORS), self.saved.get(2, 2))

    def say_reader_gone(self, advice: str) -> None:
        """Say, as the log's last line (and on stderr where its reader is still there), that the
        training stopped because the console's reader went away, and how to continue (``advice``:
        the checkpoint kept, how a rerun resumes)."""
        which = " and ".join(name for fd, name in ((1, "standard output"), (2, "standard error")) if fd in self.gone)
        line = (f"bafusion train: stopped: the reader of its {which or 'output'} went away (a closed pipe, as "
                f"`| head`), status 141; {advice}")
        if 2 in self.gone:
            self.log_text(line + "\n")
        else:  # on the console too, and so in the log
            with contextlib.suppress(OSError, ValueError):
                print(line, file=sys.stderr, flush=True)

    def end_stdout(self) -> None:
        """Send the standard output where it went before and copy what is still on its way: once
        the command's work has returned, so that :attr:`stdout_failed` says whether all of its
        lines could be written there (the error lines that follow go to stderr, still copied)."""
        with contextlib.suppress(AttributeError, ValueError, OSError):
            sys.stdout.flush()
        self._end_closed_stdout()
        if 1 in self.saved:
            os.dup2(self.saved[1], 1)  # closes this process's end of the pipe: its thread reads to the end
            self.threads.pop(1).join(timeout=10)
            with contextlib.suppress(OSError):
                os.close(self.saved.pop(1))

    def _end_closed_stdout(self) -> None:
        if self.stdout is not None:  # closed again, as it was
            if sys.stdout is self.stdout:
                sys.stdout = None  # type: ignore[assignment]
            with contextlib.suppress(OSError, ValueError):
                self.stdout.close()  # (closefd=False: descriptor 1 stays)
            self.stdout = None

    def stop(self) -> None:
        """Send the output where it went before, copy what is still on its way, close the log."""
        if self.fh is None:
            return
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(AttributeError, ValueError, OSError):
                stream.flush()
        self._end_closed_stdout()
        for fd, saved in self.saved.items():
            os.dup2(saved, fd)  # closes this process's end of the pipe: its thread reads to the end
        for t in self.threads.values():
            t.join(timeout=10)  # (a process started here that still runs holds the pipe open)
        with self.lock:
            self._keep_at_path()
            with contextlib.suppress(OSError):
                self.fh.close()
            self.fh = None
        for saved in self.saved.values():
            with contextlib.suppress(OSError):
                os.close(saved)
        self.saved.clear()

    def _pump(self, r: int, out: int, fd: int) -> None:
        failed: OSError | None = None  # the standard output's failure, until its line is whole
        # stderr's lines are stamped, as in every log (its copy is a pipe); on a terminal they are
        # shown as without --log: unstamped
        unstamped = Unstamped() if fd == 2 and fd_is_terminal(out) else None
        try:
            while True:
                data = os.read(r, 65536)
                if not data:
                    if unstamped is not None:
                        with contextlib.suppress(OSError):
                            os.write(out, unstamped.flush())
                    return
                view = memoryview(unstamped.feed(data) if unstamped is not None else data)
                gone = False
                try:
                    while view and not (fd == 1 and (failed or self.stdout_failed) is not None):
                        view = view[os.write(out, view):]
                except BrokenPipeError:  # the reader gone (`| head -1`): as without --log, the command
                    gone = True  # stops at its next write there (status 141), its checkpoint kept
                except OSError as e:
                    failed = e if fd == 1 and self.stdout_failed is None else None
                with self.lock:
                    self._write_log(data, out)
                if gone:  # the pipe closed (below): the command's next write to it fails as the reader's did
                    self._reader_gone(r, out, fd)
                    return
                if failed is not None and data.endswith(b"\n"):  # said after that line, in the log too
                    self._stdout_fails(failed)
                    failed = None
        finally:
            if failed is not None:
                self._stdout_fails(failed)
            with contextlib.suppress(OSError):
                os.close(r)

    def _reader_gone(self, r: int, console: int, fd: int) -> None:
        """The reader of the console ``fd`` went away: point ``fd`` at that console, so that the
        command's next write there fails (EPIPE) as without the copy, and log what was written
        to the pipe before (its read end ``r`` is closed next, which fails the writes of the
        processes started here)."""
        self.gone.add(fd)
        with contextlib.suppress(OSError):
            os.dup2(console, fd)
        with contextlib.suppress(OSError):  # BlockingIOError: all that was on its way is read
            os.set_blocking(r, False)
            while data := os.read(r, 65536):
                with self.lock:
                    self._write_log(data, console)

    def _stdout_fails(self, e: OSError) -> None:
        """Say once, on stderr (and so in the log), that the standard output failed: its lines
        are dropped from now on, kept in the log, and the status will be 2."""
        self.stdout_failed = e
        with contextlib.suppress(OSError):
            os.write(2, f"bafusion train: error: {os.strerror(e.errno) if e.errno else e} (writing the standard "
                        f"output): what it prints there is dropped from now on, kept in the log {self.path}; the "
                        "training goes on and keeps its outputs, and ends with a non-zero status\n"
                        .encode(errors="replace"))

    def _write_log(self, data: bytes, console: int) -> None:
        if self.failed or self.fh is None:  # (stopped: a process started here still writes)
            return
        try:
            self._keep_at_path()
            self.fh.write(data)
            self.fh.flush()
        except OSError as e:
            self.failed = True
            with contextlib.suppress(OSError):
                os.write(console, f"bafusion train: warning: {self.path}: {e.strerror or e}: the log stops here "
                                  "(the training goes on)\n".encode(errors="replace"))

    def _keep_at_path(self) -> None:
        """Write the log again at its path when that was removed (not when another file is there)."""
        if self.fh is None:
            return
        try:
            os.stat(self.path)
            return  # ours, or another's: left alone
        except FileNotFoundError:
            pass
        except OSError:
            return
        try:
            new = open(self.path, "x+b")  # noqa: SIM115 - becomes self.fh
        except OSError:
            return
        try:
            self.fh.flush()
            self.fh.seek(0)
            shutil.copyfileobj(self.fh, new)
            new.flush()
        except OSError:
            new.close()
            return
        with contextlib.suppress(OSError):
            self.fh.close()
        self.fh = new


class _Rescued:
    """``sys.stderr`` while ``train --log`` copies the output (:meth:`_LogCopy.rescuing`): a
    write that fails because the reader of the console went away (``BrokenPipeError``: the
    copy points descriptor 2 at the console then) puts its text into the log before the error
    goes on. Each write is flushed, so that the text that failed is that write's only."""

    def __init__(self, stream: Any, copy: _LogCopy) -> None:
        self.stream = stream
        self.copy = copy

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)

    def write(self, text: str) -> int:
        try:
            n = self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:
            if text and 2 in self.copy.gone:  # with the line's end: print writes it apart, and it never comes
                self.copy.log_text(text if text.endswith("\n") else text + "\n")
            raise
        return n

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)


def _paths(args: argparse.Namespace) -> Paths:
    base = default_paths(args.net, args.out)
    return Paths(
        out=base.out,
        checkpoints=Path(args.checkpoints) if args.checkpoints else base.checkpoints,
        metrics=Path(args.metrics) if args.metrics else base.metrics,
        plots=Path(args.plots) if args.plots else base.plots,
    )


def _pipeline_training(net: str, paths: Paths) -> bool:
    """Whether ``paths`` are the pipeline's own (``data/models/<net>.pt`` with its checkpoints in
    ``data/checkpoints/<net>``, as the training rules pass them): that training trains over its
    own checkpoint of other parameters, as ``--restart-if-changed`` does, so a parameter edit
    retrains (``dvc repro``, ``dvc exp run -S``) with the rules' commands unchanged."""
    pipeline = default_paths(net, Path("data/models") / f"{net}.pt")
    return paths.out.resolve() == pipeline.out.resolve() and \
        paths.checkpoints.resolve() == pipeline.checkpoints.resolve()


def _train_cli(args: argparse.Namespace, cfg: TrainConfig) -> int:
    paths = _paths(args)
    summary = train(args.net, args.patches, cfg, paths, resume=not args.no_resume, progress=not args.no_progress,
                    replace_stale=args.restart_if_changed or _pipeline_training(args.net, paths))
    if dist_from_env().main:
        # the result, on stdout as every command's (the progress and the epochs' lines: stderr)
        # in the words of the end-of-run line on stderr
        print(f"{args.net}: {_saved_words(cfg.keep, summary)}, model {paths.out}")
    return 0


def run_ensemble(args: argparse.Namespace) -> int:
    import hashlib

    from bafusion.nets.model import ModelFileError, ensemble, load_model, save_model

    if len(args.members) < 2:
        raise UserError(f"an ensemble needs at least two model files, got {len(args.members)}")
    out = Path(args.out)
    if out.suffix != ".pt":
        raise UserError(f"--out {out}: a model file ends in .pt (its description is written beside it as .json)")
    written = {out.resolve(), out.with_suffix(".json").resolve()}
    for m in args.members:
        if {Path(m).resolve(), Path(m).with_suffix(".json").resolve()} & written:
            raise UserError(f"--out {out}: would overwrite the member {m} or its .json; choose another name")
    digests: dict[str, str] = {}
    for m in args.members:
        try:
            d = hashlib.sha256(Path(m).read_bytes()).hexdigest()
        except OSError:
            continue  # load_model names a missing or unreadable file below
        if d in digests:
            raise UserError(f"{m}: the same net as the member {digests[d]} (identical file); an ensemble averages "
                            "distinct nets")
        digests[d] = m
    nets, metas = [], []
    for m in args.members:
        try:
            net, meta = load_model(m)
        except ModelFileError as e:
            raise UserError(str(e)) from e
        nets.append(net)
        metas.append(meta)
    for meta in metas:  # older files name the patch side patch_size
        if "patch" not in meta and "patch_size" in meta:
            meta["patch"] = meta["patch_size"]
    for key in ("patch", "input_scale", "net"):
        values = {str(meta.get(key)) for meta in metas}
        if len(values) > 1:
            raise UserError(f"{', '.join(args.members)}: the members differ in '{key}' ({sorted(values)})")
    from bafusion.fusion.models import label_position

    positions = [label_position(meta) for meta in metas]
    if len(set(positions)) > 1:  # fuse.score_position auto places all of one net's scores in one place
        listed = ", ".join(f"{m}: {p}" for m, p in zip(args.members, positions))
        raise UserError(f"the members' training labels sit in different places in the patch ({listed}; "
                        "'centre': patch files written before bafusion 0.3.0, fusion.models.label_position): "
                        "an ensemble averages their logits, so no one placement of its scores "
                        "(fuse.score_position) fits all of them; ensemble nets trained on patch files of one kind")
    try:
        net = ensemble(nets)
    except ValueError as e:
        raise UserError(f"{', '.join(args.members)}: {e}") from e
    keep = ("patch", "input_scale", "context", "net", "depth")
    meta = {k: metas[0][k] for k in keep if k in metas[0]}
    meta["ensemble_of"] = [
        {"file": str(m), "sha256": hashlib.sha256(Path(m).read_bytes()).hexdigest(),
         "meta": {k: v for k, v in mt.items() if k != "arch"}}
        for m, mt in zip(args.members, metas)
    ]
    save_model(net, args.out, meta)
    print(f"{len(nets)} nets -> {args.out} ({net.spec.to_dict()})")
    return 0
