"""The workflow on a real (single-node, 127.0.0.1) SLURM cluster through the project's profiles:
workflow/profiles/slurm (snakemake-executor-plugin-slurm) and workflow/profiles/slurm-generic
(snakemake-executor-plugin-cluster-generic + sbatch). Every Snakemake job must be a SLURM job
(checked in slurmctld's job records, the job-completion log and slurmd's log), get the CPUs and
memory the profile gives its rule, and the outputs must be right. With the training rules: a
CPU training job, and a 2-process DDP run (torchrun, launched by the rule inside its SLURM job)
that matches a 1-process run with the same global batch.

Skips (with the reason) where SLURM or munge is not installed, where not run as root (slurmd
must be), or where the executor plugin is not installed. CI installs them:
    apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge
    pip install snakemake-executor-plugin-slurm snakemake-executor-plugin-cluster-generic
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import slurm_cluster
import yaml
from pipeline_project import REPO, env, make_project
from slurm_cluster import SlurmCluster

pytestmark = pytest.mark.slow

PROFILES = REPO / "workflow" / "profiles"
HAS_TRAIN = (REPO / "workflow" / "rules" / "train.smk").exists()

#: Bigger than pipeline_project.TINY where it matters for the DDP comparison: all built-in
#: photos (7 x 9 training pairs), 64 patches per pair -> 512 validation patches from 9 pairs.
DATA = {
    "data": {"builtin": {"foregrounds": [], "backgrounds": []}},
    "patches": {"per_pair": 64, "boundary_per_pair": 16},
}
#: A short CPU training run (about 20 s on one core).
TRAIN = {"epochs": 8, "batch": 32, "lr": 0.01, "milestones": [6], "samples_per_epoch": 3072,
         "device": "cpu", "nproc": 1}
#: val_acc(2 processes) - val_acc(1 process), same seed and global batch. The two runs see the
#: same samples in the same steps; they differ by BatchNorm statistics over 16 instead of 32
#: samples (SyncBatchNorm is GPU-only) and by the order of float sums, and training amplifies
#: that into seed-like noise. Measured 2026-12-03 on this data and TRAIN, seeds 0-7:
#: 1 process 0.748 0.848 0.873 0.865 0.789 0.883 0.887 0.844 (sd 0.049),
#: 2 processes 0.730 0.854 0.820 0.820 0.727 0.881 0.889 0.863 (sd 0.063),
#: differences -0.018 +0.006 -0.053 -0.045 -0.062 -0.002 +0.002 +0.020 (mean -0.019, sd 0.031).
#: The tolerance is the mean plus 3.3 sd of those differences. The earlier run (16 patches a
#: pair, 144 validation patches, 3 epochs) gave differences up to 0.153 (sd 0.095) on these
#: seeds: a 0.10 tolerance there failed seed 0 on this machine (0.854 vs 0.722).
DDP_TOLERANCE = 0.12


def _plugin_missing(module: str, pip_name: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"{pip_name} is not installed (pip install {pip_name})"
    return None


def _cluster_skip_reason() -> str | None:
    miss = slurm_cluster.missing()
    if miss:
        return (f"SLURM is not installed (missing {', '.join(miss)}); "
                f"apt-get install {slurm_cluster.APT_PACKAGES}")
    return slurm_cluster.not_root()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory):
    reason = _cluster_skip_reason()
    if reason:
        pytest.skip(reason)
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
        assert c.running() == {"munged": True, "slurmctld": True, "slurmd": True}
        yield c
    finally:
        c.stop()
    assert c.running() == {"munged": False, "slurmctld": False, "slurmd": False}


# ------------------------------------------------------------------------------------ helpers


def _project(dest: Path, train: dict[str, Any] | None = None) -> Path:
    project = make_project(dest, DATA, git=False)
    if HAS_TRAIN and train is not None:
        params = yaml.safe_load((project / "params.yaml").read_text())
        params["train"] = dict(train)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        snakefile = project / "Snakefile"
        if "rules/train.smk" not in snakefile.read_text():  # until the Snakefile includes it
            snakefile.write_text(snakefile.read_text() + '\ninclude: "workflow/rules/train.smk"\n')
    return project


def _set_train(project: Path, **kv: Any) -> None:
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"].update(kv)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def _test_profile(name: str, dest: Path, cluster: SlurmCluster, train_threads: int) -> tuple[Path, dict]:
    """The committed profile, adapted to this 2-CPU test node only where it must be: no GPUs
    (training on CPU, ``train_threads`` CPUs), memory capped to half the node, quick status
    checks, no retries. Returns the folder and the resulting config."""
    src = PROFILES / name
    shutil.copytree(src, dest)
    cfg = yaml.safe_load((dest / "config.yaml").read_text())
    cap = cluster.memory_mb // 2
    for rule, res in cfg.get("set-resources", {}).items():
        res.pop("gpu", None)
        res.pop("gres", None)
        if "slurm_extra" in res:
            res["slurm_extra"] = "''"
        if "mem_mb" in res:
            res["mem_mb"] = min(int(res["mem_mb"]), cap)
    for rule in ("train_initial", "train_boundary"):
        cfg["set-threads"][rule] = train_threads
    cfg["retries"] = 0
    cfg["latency-wait"] = 5
    if cfg["executor"] == "slurm":
        # no slurmdbd on the test cluster: `sacct` answers "accounting storage is disabled";
        # slurm.conf has MinJobAge=1800, so the plugin accepts squeue.
        cfg["slurm-status-command"] = "squeue"
        cfg["slurm-init-seconds-before-status-checks"] = 2
        cfg["slurm-keep-successful-logs"] = True
    else:
        # the status script, relative to the repository in the committed profile
        cfg["cluster-generic-status-cmd"] = str(dest / "status.sh")
    (dest / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return dest, cfg


def _snakemake(project: Path, profile: Path, cluster: SlurmCluster, *targets: str,
               timeout: int = 600) -> subprocess.CompletedProcess[str]:
    cmd = ["snakemake", "--profile", str(profile), *targets]
    p = subprocess.run(cmd, cwd=project, env=cluster.env(env()), capture_output=True, text=True,
                       timeout=timeout)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n"
                             f"{p.stderr[-6000:]}\n{cluster.logs()}")
    return p


def _jobs_of(cluster: SlurmCluster, project: Path) -> dict[str, dict[str, str]]:
    """SLURM jobs that ran in ``project``, keyed by the comment the executor gave them (the
    slurm plugin: rule_<rule>[_wildcards_<values>]; the generic profile: <rule>:<wildcards>),
    with `scontrol show job` details. Later jobs with the same comment win."""
    out: dict[str, dict[str, str]] = {}
    for j in sorted(cluster.jobs(), key=lambda j: int(j["id"])):
        info = cluster.show_job(j["id"])
        if Path(info.get("WorkDir", "")).resolve() == project.resolve():
            out[j["comment"]] = {**j, **info}
    return out


def _check_slurm_job(cluster: SlurmCluster, job: dict[str, str], cpus: int, mem_mb: int,
                     minutes: int) -> None:
    assert job["state"] == "COMPLETED" and job["ExitCode"] == "0:0", job
    assert job["nodes"] == cluster.node, job
    assert int(job["NumCPUs"]) == cpus, job
    assert job["MinMemoryNode"] in (f"{mem_mb}M", f"{mem_mb // 1024}G"), job
    h, m = divmod(minutes, 60)
    assert job["TimeLimit"] in (f"{h:02d}:{m:02d}:00", f"{h // 24}-{h % 24:02d}:{m:02d}:00"), job
    done = {r["JobId"]: r for r in cluster.completed_jobs()}
    assert done[job["id"]]["JobState"] == "COMPLETED", done.get(job["id"])
    assert f"mem={mem_mb}M" in done[job["id"]]["Tres"], done[job["id"]]


def _steps_launched(cluster: SlurmCluster) -> set[str]:
    """Job ids whose step 0 slurmd launched (the executor's srun inside the sbatch job)."""
    return set(re.findall(r"launch task StepId=(\d+)\.0 ", cluster.slurmd_log.read_text()))


# -------------------------------------------------------------------------- the slurm plugin


@pytest.fixture(scope="module")
def slurm_run(cluster: SlurmCluster, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    reason = _plugin_missing("snakemake_executor_plugin_slurm", "snakemake-executor-plugin-slurm")
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("slurm-plugin")
    project = _project(root / "p", TRAIN)
    profile, cfg = _test_profile("slurm", root / "profile", cluster, train_threads=1)
    target = "train_initial" if HAS_TRAIN else "patches"
    with pytest.MonkeyPatch.context() as mp:  # module scope: keep MLflow in the test folder
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        proc = _snakemake(project, profile, cluster, target)
    return {"project": project, "profile": profile, "cfg": cfg, "proc": proc, "root": root}


def test_pipeline_jobs_run_on_slurm_with_the_profile_resources(slurm_run: dict, cluster: SlurmCluster) -> None:
    project, cfg, proc = slurm_run["project"], slurm_run["cfg"], slurm_run["proc"]
    jobs = _jobs_of(cluster, project)
    expected = {"rule_prepare", "rule_composite_shard_wildcards_0", "rule_composite_shard_wildcards_1",
                "rule_composite", "rule_patches"} | ({"rule_train_initial"} if HAS_TRAIN else set())
    assert expected <= set(jobs), (sorted(jobs), proc.stderr[-3000:])
    # every job Snakemake ran is one of these SLURM jobs (none ran locally), and each ran its
    # command as a job step on the node
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr)
    assert sorted(submitted, key=int) == sorted((j["id"] for j in jobs.values()), key=int)
    finished = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", proc.stdout + proc.stderr)
    assert sorted(finished) == sorted(re.sub(r"^rule_|_wildcards_.*$", "", c) for c in jobs)
    assert {j["id"] for j in jobs.values()} <= _steps_launched(cluster)

    res, threads = cfg["set-resources"], cfg["set-threads"]
    for shard in (0, 1):
        _check_slurm_job(cluster, jobs[f"rule_composite_shard_wildcards_{shard}"], cpus=threads["composite_shard"],
                         mem_mb=res["composite_shard"]["mem_mb"], minutes=res["composite_shard"]["runtime"])
    _check_slurm_job(cluster, jobs["rule_patches"], cpus=threads["patches"], mem_mb=res["patches"]["mem_mb"],
                     minutes=res["patches"]["runtime"])
    shard_runs = [jobs[f"rule_composite_shard_wildcards_{s}"] for s in (0, 1)]
    assert {j["name"] for j in jobs.values()} == {shard_runs[0]["name"]}  # one Snakemake run id

    assert sorted(p.name for p in (project / "data/composite").glob("shard-*.h5")) == ["shard-0.h5", "shard-1.h5"]
    summary = json.loads((project / "data/patches/summary.json").read_text())
    assert summary["pairs"] == 7 * 9 and summary["counts"]["initial"]["val"] > 0

    if HAS_TRAIN:
        job = jobs["rule_train_initial"]
        _check_slurm_job(cluster, job, cpus=1, mem_mb=res["train_initial"]["mem_mb"],
                         minutes=res["train_initial"]["runtime"])
        m = json.loads((project / "metrics/train_initial.json").read_text())
        assert m["world_size"] == 1 and m["epochs"] == TRAIN["epochs"]
        assert json.loads((project / "data/models/initial.json").read_text())["device"] == "cpu"
        assert (project / "data/models/initial.pt").exists()


@pytest.mark.skipif(not HAS_TRAIN, reason="no training rules (workflow/rules/train.smk) in this checkout")
def test_ddp_two_processes_in_one_slurm_job_match_one_process(slurm_run: dict, cluster: SlurmCluster) -> None:
    """train.nproc: 2 -> the training rule's job (2 CPUs) runs `bafusion train`, which
    re-launches itself under torchrun with 2 gloo processes; same seed and global batch as the
    1-process run of the fixture, so the validation accuracy agrees within noise."""
    project, root = slurm_run["project"], slurm_run["root"]
    one = json.loads((project / "metrics/train_initial.json").read_text())
    assert one["world_size"] == 1
    _set_train(project, nproc=2)
    profile, cfg = _test_profile("slurm", root / "profile-ddp", cluster, train_threads=2)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
        proc = _snakemake(project, profile, cluster, "train_initial")
    # only the training job re-ran (its params changed), as a new SLURM job with 2 CPUs
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+)", proc.stdout + proc.stderr)
    assert len(submitted) == 1, proc.stderr[-3000:]
    job = _jobs_of(cluster, project)["rule_train_initial"]
    assert job["id"] == submitted[0]
    _check_slurm_job(cluster, job, cpus=2, mem_mb=cfg["set-resources"]["train_initial"]["mem_mb"],
                     minutes=cfg["set-resources"]["train_initial"]["runtime"])
    two = json.loads((project / "metrics/train_initial.json").read_text())
    assert two["world_size"] == 2
    assert json.loads((project / "data/models/initial.json").read_text())["device"] == "cpu"
    assert two["samples_seen"] == one["samples_seen"] == TRAIN["epochs"] * TRAIN["samples_per_epoch"]
    assert two["val_patches"] == one["val_patches"] >= 100
    # both learned something (balanced validation set: chance is about 0.5) ...
    assert min(one["val_acc"], two["val_acc"]) > 0.6, (one, two)
    # ... and the same thing, within noise
    assert abs(two["val_acc"] - one["val_acc"]) <= DDP_TOLERANCE, (one["val_acc"], two["val_acc"])


# ------------------------------------------------------------------ the cluster-generic plugin


def test_generic_profile_submits_with_sbatch(cluster: SlurmCluster, tmp_path: Path) -> None:
    reason = _plugin_missing("snakemake_executor_plugin_cluster_generic", "snakemake-executor-plugin-cluster-generic")
    if reason:
        pytest.skip(reason)
    project = _project(tmp_path / "p")
    profile, cfg = _test_profile("slurm-generic", tmp_path / "profile", cluster, train_threads=1)
    proc = _snakemake(project, profile, cluster, "data/composite/shard-0.h5", "data/composite/shard-1.h5")
    submitted = re.findall(r"with external jobid '(\d+)'", proc.stdout + proc.stderr)
    jobs = _jobs_of(cluster, project)
    assert {"prepare:", "composite_shard:shard=0", "composite_shard:shard=1"} <= set(jobs), sorted(jobs)
    assert sorted(submitted, key=int) == sorted((j["id"] for j in jobs.values()), key=int)
    for shard in (0, 1):
        job = jobs[f"composite_shard:shard={shard}"]
        assert job["name"] == "smk-composite_shard"
        _check_slurm_job(cluster, job, cpus=cfg["set-threads"]["composite_shard"],
                         mem_mb=cfg["set-resources"]["composite_shard"]["mem_mb"],
                         minutes=cfg["set-resources"]["composite_shard"]["runtime"])
        assert (project / f"data/composite/shard-{shard}.h5").stat().st_size > 0
        assert (project / "logs/slurm/composite_shard" / f"{job['id']}.log").exists()


def test_generic_status_script_maps_slurm_states(cluster: SlurmCluster, tmp_path: Path) -> None:
    """The status script of the generic profile says success / failed / running."""
    script = str(PROFILES / "slurm-generic" / "status.sh")
    e = cluster.env()

    def submit(cmd: str) -> str:
        return cluster.client(["sbatch", "--parsable", "-o", str(tmp_path / "%j.out"), "-D", str(tmp_path),
                               "--mem", "100", "--wrap", cmd]).stdout.strip()

    def status(job: str) -> str:
        return subprocess.run([script, job], env=e, capture_output=True, text=True, check=True).stdout.strip()

    ok, bad, slow = submit("true"), submit("exit 3"), submit("sleep 60")
    import time

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (status(ok) == "success" and status(bad) == "failed"):
        time.sleep(0.5)
    assert (status(ok), status(bad), status(slow)) == ("success", "failed", "running")
    cluster.client(["scancel", slow])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and status(slow) == "running":
        time.sleep(0.5)
    assert status(slow) == "failed"  # CANCELLED
