"""Config values reach the rules' shell commands quoted: a path with an apostrophe broke the
command ("unexpected EOF while looking for matching `''"), and one with ``$(...)`` ran it.
Checked on the commands ``snakemake -n -p`` prints, split as a POSIX shell splits them and
parsed by ``bafusion``'s own parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import shared_data_dir
from pipeline_project import make_project, run, shell_commands


def test_config_paths_with_quotes_and_dollar_reach_the_commands_as_one_word(tmp_path: Path) -> None:
    odd = tmp_path / "o'brien $(touch INJECTED) `id`"
    for sub in ("am", "ann", "imgs", "eval", "cache", "dir/input", "dir/gt", "bg"):
        (odd / sub).mkdir(parents=True)
    (odd / "ann" / "a.json").write_text("{}")
    web = {
        # backgrounds: 3 (+ 1 held out) to download, not the hold-out alone (refused)
        "data": {"source": "web", "backgrounds": 3},
        "download": {
            "cache": str(odd / "cache"),
            "alphamatting": {"from_dir": str(odd / "am"), "base_url": "http://127.0.0.1:9/it's/",
                             "checksums": {"input_training_lowres.zip": "sha256:" + "0" * 64}},
            "coco": {"annotations": str(odd / "ann" / "a.json"), "images_dir": str(odd / "imgs"),
                     "categories": ["it's"], "image_base_url": "http://127.0.0.1:9/$(id)/"},
            "eval": {"from_dir": str(odd / "eval")},
        },
    }
    project = make_project(tmp_path / "p", web, git=False)
    out = run(["snakemake", "-n", "-p", "--cores", "1", "download_alphamatting", "download_coco", "download_eval"],
              project).stdout
    cmds = shell_commands(out)
    am, coco, ev = cmds["download_alphamatting"], cmds["download_coco"], cmds["download_eval"]
    assert am.from_dir == str(odd / "am") and am.base_url == "http://127.0.0.1:9/it's/"
    assert am.checksum == ["input_training_lowres.zip=sha256:" + "0" * 64]
    assert am.cache == coco.cache == ev.cache == str(odd / "cache")
    assert coco.annotations == str(odd / "ann" / "a.json") and coco.images_dir == str(odd / "imgs")
    assert coco.categories == "it's" and coco.exclude_categories == "" and coco.split == "train2017"
    assert coco.image_base_url == "http://127.0.0.1:9/$(id)/"
    assert ev.from_dir == str(odd / "eval") and ev.base_url == "" and ev.sets == "lytro,classic"

    dirs = {"alphamatting": str(odd / "dir"), "backgrounds": str(odd / "bg")}
    project = make_project(tmp_path / "q", {"data": {"source": "dir", "dir": dirs}}, git=False)
    prep = shell_commands(run(["snakemake", "-n", "-p", "--cores", "1", "prepare"], project).stdout)["prepare"]
    assert prep.alphamatting == str(odd / "dir") and prep.backgrounds_dir == str(odd / "bg") and prep.source == "dir"
    assert not list(tmp_path.rglob("INJECTED"))


def _threads(output: str) -> dict[str, tuple[int, int | None]]:
    """rule -> (the job's threads, the --threads of its command or None), from ``snakemake -n
    -p``'s output (the train rules' ``>&2`` keeps shell_commands from parsing theirs)."""
    import re

    found = {}
    for m in re.finditer(r"^rule (\w+):\n((?:.*\n)*?)Shell command: (bafusion .*)$", output, re.M):
        job = re.search(r"^\s*threads: (\d+)$", m.group(2), re.M)
        opt = re.search(r" --threads (\d+)", m.group(3))
        found[m.group(1)] = (int(job.group(1)) if job else 1, int(opt.group(1)) if opt else None)
    return found


def test_fuse_and_evaluate_threads_0_take_the_free_cores_of_the_run(tmp_path: Path) -> None:
    """`fuse.threads: 0` and `evaluate.threads: 0` ("torch's": the free cores, as the commands read
    them by hand) ran the pipeline's fuse and evaluate on 2 threads whatever --cores said (the rules
    read 0 as 2); they then took all of --cores as `--threads`, every core under each DVC stage's
    `--cores all` whatever the load (on 2 cores at a load of 12, a 520x520 fusion took 20-30 s on 2
    threads against 2.4-2.7 s on 1). For 0 the job now has all of --cores and its command no
    --threads: it takes torch's threads, which Snakemake sets to the job's (OMP_NUM_THREADS),
    lowered to the free cores. A number stays that number. params.yaml's own were 2 (both cores
    of the 2-core machine whatever the load, a 520x520 fusion 23-33 s against 5-6 s on 1 thread at
    a load of 10): now 0, as the schema's."""
    project = make_project(tmp_path / "p", git=False)
    found = _threads(run(["snakemake", "-n", "-p", "--cores", "3", "fuse", "evaluate"], project).stdout)
    assert (found["fuse"], found["evaluate"]) == ((3, None), (3, None)), found  # params.yaml's
    zero = ["--config", "fuse={threads: 0}", "evaluate={threads: 0}"]
    found = _threads(run(["snakemake", "-n", "-p", "--cores", "3", "fuse", "evaluate", *zero], project).stdout)
    assert (found["fuse"], found["evaluate"]) == ((3, None), (3, None)), found
    one = ["--config", "fuse={threads: 1}", "evaluate={threads: 2}"]
    found = _threads(run(["snakemake", "-n", "-p", "--cores", "3", "fuse", "evaluate", *one], project).stdout)
    assert (found["fuse"], found["evaluate"]) == ((1, 1), (2, 2)), found


def _local_coco(folder: Path, n: int = 12) -> tuple[Path, Path]:
    """A COCO annotations JSON (test_coco's) and its photos (colour noise, as big as the JSON
    says): download_coco's inputs without the network."""
    import numpy as np
    from PIL import Image
    from test_coco import coco_dataset

    imgs = folder / "train2017"
    imgs.mkdir(parents=True)
    data = coco_dataset(n)
    rng = np.random.default_rng(0)
    for rec in data["images"]:
        arr = rng.integers(0, 256, (rec["height"], rec["width"], 3), dtype=np.uint8)
        Image.fromarray(arr).save(imgs / rec["file_name"], quality=90)
    ann = folder / "instances_train2017.json"
    ann.write_text(json.dumps(data))
    return ann, imgs


@pytest.mark.slow
def test_network_settings_of_the_downloads_are_no_rerun_trigger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """download.net.* and download.cache decide how the files are fetched, not which; as plain
    params of the download rules a changed timeout reran the downloads (Snakemake's "Params have
    changed") and, under data.source: web, everything after them. They are now no rerun trigger
    (a params function Snakemake does not compare: download_net) but still reach the commands,
    while a key that decides the files (download.coco.count, the alphamatting from_dir) still
    reruns its rule. (Without the fix the net change planned both downloads again.)"""
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    ann, imgs = _local_coco(tmp_path / "coco")
    am = shared_data_dir() / "train" / "alphamatting"
    coco = {"count": 2, "annotations": str(ann), "annotations_checksum": "", "images_dir": str(imgs)}
    download = {"cache": str(tmp_path / "cache"), "coco": coco}
    rules = ["download_coco"]
    if am.is_dir():  # the probe's reproduction: the real alphamatting images as a from_dir copy
        download["alphamatting"] = {"from_dir": str(am)}
        rules.append("download_alphamatting")
    project = make_project(tmp_path / "p", {"download": download}, git=False)
    run(["snakemake", "--cores", "1", *rules], project)

    def plan(change: dict) -> tuple[str, dict]:
        out = run(["snakemake", "-n", "-p", "--cores", "1", *rules, "--config", f"download={json.dumps(change)}"],
                  project).stdout
        return out, shell_commands(out)

    net = {"net": {"retries": 1, "backoff": 0.5, "timeout": 7, "workers": 3}, "cache": str(tmp_path / "cache2")}
    out, cmds = plan(net)
    assert "Nothing to be done" in out and not cmds, out
    # the new values reach the commands (a run asked for, -R, uses them; the targets before -R,
    # which takes several values)
    out = run(["snakemake", "-n", "-p", "--cores", "1", *rules, "-R", *rules, "--config",
               f"download={json.dumps(net)}"], project).stdout
    cmds = shell_commands(out)
    assert set(cmds) == set(rules), out
    for cmd in cmds.values():
        assert (cmd.retries, cmd.backoff, cmd.timeout, cmd.workers) == (1, 0.5, 7, 3), cmd
        assert cmd.cache == str(tmp_path / "cache2")
    # what decides the files still reruns its rule
    out, cmds = plan({"coco": {"count": 3}})
    assert set(cmds) == {"download_coco"} and cmds["download_coco"].count == 3, out
    assert "Params have changed since last execution" in out, out
    if am.is_dir():
        out, cmds = plan({"alphamatting": {"from_dir": str(tmp_path / "elsewhere")}})
        assert set(cmds) == {"download_alphamatting"}, out
