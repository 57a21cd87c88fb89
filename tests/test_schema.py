"""The parameter schema (bafusion/schemas/params.schema.yaml): what it accepts, what it refuses
and how it says so, in Python, in the ``bafusion`` commands, in ``snakemake -n`` and ``dvc``."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import yaml
from params_edit import without_keys
from pipeline_project import REPO, make_project, run

from bafusion import cli
from bafusion.config import (
    deep_merge,
    load_params,
    load_preset,
    preset_names,
    validate_params,
)
from bafusion.schema import ParamsError, load_schema, problems, schema_path

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())

#: (override, the key the error must name, words of the rule it must state)
BAD = [
    ({"patch": 30}, "patch", "multiple of 4"),
    ({"patch": "abc"}, "patch", "multiple of 4"),
    ({"patch": 4}, "patch", "multiple of 4 >= 8"),  # a 1x1 last map: training failed on a batch of one
    ({"seed": 2**64}, "seed", "from 0 to 2^63 - 1"),  # passed, then an HDF5 object dtype / torch overflow
    ({"composite": {"fit": "bogus"}}, "composite.fit", "cover | stretch"),
    ({"depth": 21}, "depth", "6n+2"),
    # above the nets' MAX_DEPTH: passed, and training failed later building the net
    ({"depth": 1208}, "depth", "at most 1202"),
    ({"bogus_key": 1}, "bogus_key", "unknown key"),
    ({"train": {"initial": {"epoch": 3}}}, "train.initial.epoch", "unknown key"),
    ({"fuse": {"boundary_mode": "fast"}}, "fuse.boundary_mode", "adaptive | grid | dense | exact"),
    ({"patches": {"context": 6}}, "patches.context", "multiple of 4"),
    ({"train": {"amp": "yes"}}, "train.amp", "auto, true or false"),
    ({"evaluate": {"datasets": [{"name": "x", "sources": "y", "crop": [1, 2]}]}}, "evaluate.datasets[0].crop",
     "[top, left, side]"),
]


def test_shipped_params_and_presets_validate() -> None:
    assert problems(PARAMS) == []
    assert set(preset_names()) >= {"paper", "real"}
    for name in preset_names():
        preset = load_preset(name)  # validates the preset alone
        assert problems(deep_merge(PARAMS, preset)) == [], name


def test_every_key_of_params_yaml_is_described() -> None:
    """Each key of params.yaml has a schema entry (types, ranges or allowed values, not just 'any')."""
    schema = load_schema()

    def walk(node: dict, sch: dict, prefix: str) -> None:
        if "$ref" in sch:
            sch = {**schema["$defs"][sch["$ref"].split("/")[-1]], **{k: v for k, v in sch.items() if k != "$ref"}}
        props = dict(sch.get("properties", {}))
        if "$ref" in schema["properties"].get(prefix, {}):  # train: the per-net keys + initial/boundary
            props.update(schema["$defs"]["train_net"]["properties"])
        for k, v in node.items():
            assert k in props, f"{prefix}.{k} has no schema entry"
            entry = props[k]
            assert set(entry) & {"type", "enum", "$ref", "anyOf", "const"}, f"{prefix}.{k} is not constrained"
            if isinstance(v, dict) and v and "additionalProperties" not in entry:
                walk(v, entry, k if not prefix else f"{prefix}.{k}")

    walk(PARAMS, schema, "")


#: Keys of the schema params.yaml leaves out on purpose: their absence means something.
ABSENT_ON_PURPOSE = {"evaluate.device": "absent: fuse.device"}


def test_params_yaml_has_every_key_of_the_schema() -> None:
    """params.yaml pins every key the schema knows (a new key is added to it with its value),
    so a fresh project never runs on an unpinned x-default, and the pipeline's warning about
    keys an older params.yaml lacks (bafusion.cli.params_check) is silent for it."""
    from bafusion.schema import _has, leaf_keys, missing_defaults

    lacking = [k for k in leaf_keys() if not _has(PARAMS, k) and k not in ABSENT_ON_PURPOSE]
    assert lacking == [], f"params.yaml lacks {lacking}: add them (with a comment) to params.yaml"
    assert missing_defaults(PARAMS) == {}
    assert set(ABSENT_ON_PURPOSE) <= set(leaf_keys())
    assert "fuse.boundary_weight" in leaf_keys() and "train.initial.lr" not in leaf_keys()


@pytest.mark.parametrize("override,key,rule", BAD)
def test_bad_values_are_refused_naming_key_and_rule(override: dict, key: str, rule: str) -> None:
    with pytest.raises(ParamsError) as e:
        validate_params(deep_merge(PARAMS, override), "params.yaml")
    msg = str(e.value)
    assert msg.startswith("params.yaml: ") and "\n" not in msg
    assert key in msg and rule in msg, msg


def test_patch_message_explains_the_grid() -> None:
    assert problems({"patch": 30}) == [
        "patch: 30 is not a multiple of 4 >= 8 (the nets' 4-px dense grid: their total stride; at 4 their last map is 1x1)"]
    assert problems({"patch": 32, "depth": 56}) == []
    assert problems({"patch": 0}) and problems({"depth": 2}) and problems({"depth": True})


def test_a_bad_reference_jpeg_quality_is_said_in_words() -> None:
    """A quality out of 1..100 in ``reference_jpeg_quality`` (a method's or ``*``'s, a number or
    per prefix) said "101 is not valid under any of the given schemas" (jsonschema's anyOf)."""
    for value, shown in ((101, "101"), ({"savic": 0}, '{"savic": 0}')):
        ds = {"name": "x", "sources": "y", "reference_jpeg_quality": {"DPRL": value}}
        assert problems({"evaluate": {"datasets": [ds]}}) == [
            f"evaluate.datasets[0].reference_jpeg_quality.DPRL: {shown} is not a JPEG quality 1..100 or "
            "{pair-name prefix: quality}"]


def test_load_params_and_commands_refuse_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(deep_merge(PARAMS, {"composite": {"fit": "bogus"}})))
    with pytest.raises(ParamsError, match=r"bad\.yaml: composite\.fit: 'bogus' is not one of cover \| stretch"):
        load_params(bad)
    assert load_params(bad, validate=False)["composite"]["fit"] == "bogus"

    rc = cli.main(["count", "--params", str(bad)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and "bad.yaml: composite.fit" in err, err

    # bafusion train: the parameters are checked before the patch set is even opened
    for args, words in (
        (["--params", str(bad)], "bad.yaml: composite.fit"),
        (["--params-json", json.dumps({"patch": 30})], "--params-json: patch: 30 is not a multiple of 4 >= 8"),
        (["--params-json", json.dumps({"patch": 32}), "--set", "depth=21"], "--params-json + --set: depth: 21"),
    ):
        rc = cli.main(["train", "--net", "initial", "--patches", str(tmp_path / "none.h5"),
                       "--out", str(tmp_path / "m.pt"), *args])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and words in err and "none.h5" not in err, err

    # bafusion fuse-set / evaluate: their sections
    rc = cli.main(["fuse-set", "--pairs", str(tmp_path), "--initial", str(tmp_path / "i.pt"), "--boundary",
                   str(tmp_path / "b.pt"), "--out", str(tmp_path / "f"), "--params-json", json.dumps({"tile": 30})])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--params-json: fuse.tile: 30 is not a multiple of 4 from 4 to 4096" in err, err
    rc = cli.main(["evaluate", "--out", str(tmp_path / "e"), "--params-json", json.dumps({"metrics": ["QXX"]})])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "evaluate.metrics[0]: 'QXX' is not one of QMI" in err, err


def test_snakemake_reads_the_same_schema_file() -> None:
    from jsonschema import Draft202012Validator

    Draft202012Validator.check_schema(load_schema())  # a valid JSON Schema (2020-12)
    assert Path(schema_path()).is_file()
    text = (REPO / "workflow" / "rules" / "common.smk").read_text()  # the Snakefile includes it first
    assert "validate(config, schema_path())" in text and "validate_params(config" in text


def test_snakemake_lint_is_clean(tmp_path: Path) -> None:
    """README: "`snakemake --lint` is clean ... the rule files hold only rules (helpers in
    workflow/rules/common.smk)". evaluate.smk defined its own helper function, and the lint
    said "Mixed rules and functions in same snakefile" (exit status 1)."""
    project = make_project(tmp_path / "p", git=False)
    p = run(["snakemake", "--lint"], project, check=False)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "Lints for" not in out, out[-3000:]


def _files(folder: Path) -> list[Path]:
    """The files a job wrote under ``folder``: all but data/evaluate-inputs.json, the listing of
    the evaluate datasets that a run (not a dry run) of a DAG holding evaluate writes when the DAG
    is built, before a job runs."""
    return [p for p in folder.rglob("*") if p.is_file() and p.name != "evaluate-inputs.json"] if folder.exists() else []


def _dry_run_with(project: Path, override: dict, edit=lambda text: text):
    """``snakemake -n all`` with ``override`` merged into the project's params.yaml (the text
    then passed through ``edit``); the file is restored."""
    good = (project / "params.yaml").read_text()
    try:
        text = edit(yaml.safe_dump(deep_merge(yaml.safe_load(good), override)))
        assert text != good
        (project / "params.yaml").write_text(text)
        return run(["snakemake", "-n", "all"], project, check=False)
    finally:
        (project / "params.yaml").write_text(good)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("schema") / "p")


@pytest.mark.slow
@pytest.mark.parametrize("override,key,rule", [b for b in BAD if b[1] in ("patch", "composite.fit", "depth", "bogus_key")])
def test_bad_config_fails_snakemake_dry_run(project: Path, override: dict, key: str, rule: str) -> None:
    p = _dry_run_with(project, override)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "params.yaml: " in out and key in out and rule in out, out[-2000:]
    assert "Job stats" not in out
    # one line, as the README says: not Snakemake's "ParamsError in file Snakefile" and its frames
    assert "Error in file" not in out and 'File "' not in out, out[-2000:]


@pytest.mark.slow
@pytest.mark.parametrize("override,words", [
    ({"composite": {"sigma": [3.0, 1.0]}}, "composite.sigma must be [lo, hi] with 0 < lo <= hi"),
    ({"fuse": {"low": 0.9, "high": 0.8}}, "need low < high"),
    ({"train": {"consistency": 1.0}, "patches": {"context": 0}}, "train.consistency: 1.0 needs patches.context > 0"),
    # refused by the training job only, after prepare, composite and patches
    ({"train": {"nproc": 3}}, "train.batch: 16 is not divisible by train.nproc: 3"),
    # refused by prepare only, after the download of the 1 (held-out) background; since 0.5.0
    # data.backgrounds 0 downloads 700 + the held-out ones, so only a download.coco.count given is too small
    ({"data": {"source": "web"}, "download": {"coco": {"count": 1}}},
     "data.holdout_backgrounds: cannot hold out 1 of the 1 COCO backgrounds"),
])
def test_rules_across_keys_fail_snakemake_dry_run(project: Path, override: dict, words: str) -> None:
    """Each key valid alone, the pair not: refused at planning time, as the job would."""
    p = _dry_run_with(project, override)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "params.yaml: " in out and words in out, out[-2000:]
    assert "Job stats" not in out
    assert "Error in file" not in out and 'File "' not in out, out[-2000:]


def test_the_tiny_pipeline_config_draws_no_warning(capsys: pytest.CaptureFixture[str]) -> None:
    """The end-to-end tests' config (epochs 1, milestones [1]) printed 'warning: ...
    train.milestones: 1 not before the last epoch' at every snakemake call."""
    from pipeline_project import TINY, _merge

    from bafusion.cli.params_check import check_params

    params = validate_params(_merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY), "tiny")
    check_params(params, "tiny")
    assert capsys.readouterr().err == ""
    assert params["train"]["milestones"] == [] and validate_params(params, "tiny") == params


def test_the_colour_maps_known_without_matplotlib_are_matplotlibs() -> None:
    """The static list that spares every command reading parameters the import of matplotlib
    names only matplotlib's own colour maps, each also reversed."""
    import matplotlib

    from bafusion.schema import MATPLOTLIB_COLOUR_MAPS, colour_map_problem

    known = set(matplotlib.colormaps)
    assert {"jet", "magma", "viridis", "gray"} <= MATPLOTLIB_COLOUR_MAPS
    for name in MATPLOTLIB_COLOUR_MAPS:
        assert name in known and f"{name}_r" in known, name
    assert colour_map_problem("vanimo_r" if "vanimo_r" in known else "jet_r") is None  # beyond the list: matplotlib's
    assert "did you mean jet?" in colour_map_problem("jte") and colour_map_problem("magma_r_r")


def test_reading_the_parameters_does_not_import_matplotlib(tmp_path: Path) -> None:
    """Every command reading parameters imported matplotlib to check fuse.diff_cmap: under an
    unwritable HOME (a container, a service, a read-only cluster home) each printed matplotlib's
    two lines "mkdir -p failed for path .../matplotlib ... Matplotlib created a temporary cache
    directory" first (and paid 0.2 s of start-up), although none draws anything."""
    import subprocess
    import sys

    unwritable = tmp_path / "home"
    unwritable.mkdir(mode=0o555)
    code = ("import sys\n"
            "from bafusion.cli import main\n"
            "from bafusion.config import load_preset, validate_params\n"
            "for name in ('paper', 'real'):\n"
            "    validate_params(load_preset(name), name)\n"
            "rc = main(['count'])\n"
            "print('matplotlib' in sys.modules, rc)\n")
    env = {"PATH": "/usr/bin:/bin", "HOME": "/proc" if os.geteuid() == 0 else str(unwritable)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env,
                          timeout=120)
    assert proc.stdout.splitlines()[-1] == "False 0", proc.stdout + proc.stderr
    assert "atplotlib" not in proc.stderr, proc.stderr


@pytest.mark.slow
def test_an_empty_boundary_patch_set_is_a_warning_for_targets_before_the_boundary_net(project: Path) -> None:
    """patches.boundary_per_pair: 0 failed every target, also train_initial, which never reads
    the boundary set: the Snakefile is read before Snakemake knows the targets, so one line says it."""
    p = run(["snakemake", "-n", "--cores", "1", "train_initial", "--config", 'patches={"boundary_per_pair": 0}'],
            project, check=False)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "rule train_initial:" in out and "Job stats" in out, out[-2000:]
    warning = [line for line in out.splitlines() if line.startswith("warning:") and "boundary_per_pair" in line]
    assert warning == ["warning: params.yaml + --config: patches.boundary_per_pair: 0 leaves the boundary net's "
                       "patch set empty: train_boundary (and what needs the boundary net: fuse, evaluate, all) "
                       "would fail on it"], out[-2000:]


@pytest.mark.slow
def test_a_missing_key_of_the_rules_fails_in_one_line(project: Path) -> None:
    """A key the rules read that params.yaml lacks: its x-default (seed, patch), as the commands
    take it, or one line naming the key (it was Snakemake's KeyError traceback of data.smk)."""
    def without(*keys: str):
        return lambda text: yaml.safe_dump(without_keys(yaml.safe_load(text), *keys))

    for key in ("prepare.scale", "prepare.min_background_side", "data.source", "composite.sigma",
                "composite.fit", "composite.shards", "patches.per_pair", "patches.boundary_per_pair"):
        p = _dry_run_with(project, {}, without(key))
        out = p.stdout + p.stderr
        assert p.returncode != 0 and f"params.yaml: {key}: missing" in out, (key, out[-2000:])
        assert "Traceback" not in out and 'File "' not in out and "KeyError" not in out, out[-2000:]
    ok = _dry_run_with(project, {}, without("seed", "patch"))
    assert ok.returncode == 0 and "rule prepare" in ok.stdout, (ok.stdout + ok.stderr)[-2000:]


@pytest.mark.slow
def test_a_refusal_in_a_dvc_stage_says_dvc_removed_the_stages_outputs(project: Path) -> None:
    """Under `dvc exp run -S prepare.scale=0.01` DVC deleted data/prepared before calling
    Snakemake, which refused the value in one line that did not say so."""
    import subprocess

    from pipeline_project import env

    def dry_run(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["snakemake", "-n", "prepare", "--config", "prepare={scale: 0.01}"], cwd=project,
                              capture_output=True, text=True, timeout=300, env={**env(), **extra})

    p = dry_run(DVC_STAGE="prepare", DVC_ROOT=str(project))
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert p.returncode != 0 and lines[-2].startswith("error: params.yaml + --config: prepare.scale: 0.01"), lines
    assert lines[-1] == ("note: dvc removes a stage's outputs before running it: those of stage 'prepare' "
                         "(data/prepared), if there were any, are gone (dvc.lock has no record of them): fix the "
                         "value and run the stage again"), lines
    p = dry_run()  # not under DVC: the error alone
    assert p.returncode != 0 and (p.stdout + p.stderr).strip().splitlines()[-1].startswith("error: "), p.stderr
    # the refusals checked once the rules are read (a warm-start file that is not there; also
    # evaluate's folders, a device this machine lacks) said nothing of the deleted outputs
    p = subprocess.run(["snakemake", "-n", "prepare", "--config", "train={init: models/typo/initial.pt}"],
                       cwd=project, capture_output=True, text=True, timeout=300,
                       env={**env(), "DVC_STAGE": "prepare", "DVC_ROOT": str(project)})
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert p.returncode != 0 and lines[-2] == ("error: params.yaml + --config: train.init models/typo/initial.pt: "
                                               "model file not found (the warm start of the initial net)"), lines
    assert lines[-1].startswith("note: dvc removes a stage's outputs before running it: those of stage 'prepare' "
                                "(data/prepared)"), lines


@pytest.mark.slow
def test_a_params_yaml_without_a_newer_key_draws_one_warning_per_snakemake_call(project: Path) -> None:
    """An upgraded project's params.yaml without fuse.boundary_weight fused with 0.75 (the
    library default), unlike its earlier runs and a fresh project (1), and snakemake -n said
    nothing. One line per call: not where an override file pins the key, not in a DVC stage
    that does not use it, not in a job's own reading of the Snakefile (--mode subprocess, as
    cluster jobs run)."""
    import os
    import subprocess

    from pipeline_project import env

    def warnings(*args: str, stage: str | None = None) -> list[str]:
        p = subprocess.run(["snakemake", "-n", *args], cwd=project, capture_output=True, text=True, timeout=300,
                           env={**env(), **({"DVC_STAGE": stage} if stage else {})})
        assert p.returncode == 0, (p.stdout + p.stderr)[-2000:]
        return [line for line in (p.stdout + p.stderr).splitlines() if line.startswith("warning:")]

    good = (project / "params.yaml").read_text()
    pin = project.parent / "pin.yaml"
    pin.write_text("fuse: {boundary_weight: 1.0}\n")
    try:
        old = yaml.safe_load(good)
        del old["fuse"]["boundary_weight"]
        (project / "params.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
        line = ("warning: params.yaml: no fuse.boundary_weight (0.75 used: the library default; the paper preset's "
                "is 1) - add the keys to pin them (new keys since the file was written)")
        assert warnings("all") == [line]
        assert warnings("all", "--configfile", str(pin)) == []
        assert warnings("prepare", stage="prepare") == []
        assert warnings("fuse", stage="fuse") == [line]
        assert warnings("all", "--mode", "subprocess") == []
    finally:
        (project / "params.yaml").write_text(good)
    assert warnings("all") == [] and "DVC_STAGE" not in os.environ


@pytest.mark.slow
@pytest.mark.parametrize(("how", "value", "said"), [
    ("params.yaml", {"train": {"lr": float("nan")}}, "params.yaml: train.lr: NaN is not a number"),
    ("params.yaml", {"composite": {"sigma": [1.0, float("inf")]}},
     "params.yaml: composite.sigma[1]: inf is not a finite number"),
    ("--config", "train={lr: .inf}", "params.yaml + --config: train.lr: inf is not a finite number"),
    ("--config", "fuse={boundary_weight: .nan}", "params.yaml + --config: fuse.boundary_weight: NaN is not a number"),
])
def test_nan_and_inf_in_the_config_fail_the_dry_run(project: Path, how: str, value: object, said: str) -> None:
    """NaN and inf are refused by the Snakefile as by the commands (bafusion's validate_params,
    before Snakemake's validate(), whose JSON Schema check takes NaN for a number), before any job."""
    if how == "params.yaml":
        p = _dry_run_with(project, value)
    else:
        p = run(["snakemake", "-n", "all", "--config", str(value)], project, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and f"error: {said}" in out, out[-2000:]
    assert "Job stats" not in out and 'File "' not in out, out[-2000:]


@pytest.mark.slow
def test_config_override_is_checked_too(project: Path) -> None:
    p = run(["snakemake", "-n", "all", "--config", "patch=abc"], project, check=False)
    assert p.returncode != 0
    assert "params.yaml + --config: patch: 'abc' is not a multiple of 4 >= 8" in p.stdout + p.stderr
    ok = run(["snakemake", "-n", "all"], project)
    assert "train_initial" in ok.stdout
    # a nested override: Snakemake reads its values as strings (BaseLoader); they are numbers
    ok = run(["snakemake", "-n", "-p", "train_initial", "--forcerun", "train_initial",
              "--config", "train={epochs: 2, lr: 1e-3}"], project, check=False)
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-2000:]
    assert '"epochs": 2,' in ok.stdout and '"lr": 0.001,' in ok.stdout, ok.stdout[-3000:]
    bad = run(["snakemake", "-n", "all", "--config", "train={epochs: abc}"], project, check=False)
    assert bad.returncode != 0 and "train.epochs: 'abc' is not an integer" in bad.stdout + bad.stderr
    # 5e-05 as `dvc exp run -S` writes it: a number for Snakemake's configfile too (PyYAML: a string)
    def no_dot(text: str) -> str:
        assert "lr: 5.0e-05" in text
        return text.replace("lr: 5.0e-05", "lr: 5e-05")

    ok = _dry_run_with(project, {"train": {"lr": 5e-05}}, no_dot)
    assert ok.returncode == 0 and "train_initial" in ok.stdout, (ok.stdout + ok.stderr)[-2000:]


@pytest.mark.slow
def test_bad_config_fails_dvc_before_any_job(project: Path) -> None:
    """dvc repro / dvc exp run -S: the first stage's snakemake refuses the config before its job."""
    try:  # params.yaml restored whatever happens: the later tests share the project
        p = run(["dvc", "exp", "run", "-S", "patch=30"], project, check=False)
        out = p.stdout + p.stderr
        assert p.returncode != 0 and "patch: 30 is not a multiple of 4 >= 8" in out, out[-2000:]
        assert _files(project / "data") == [] and _files(project / "logs") == []  # no job ran
        run(["git", "checkout", "--", "params.yaml"], project)
        (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("fit: cover", "fit: bogus"))
        p = run(["dvc", "repro"], project, check=False)
        out = p.stdout + p.stderr
        assert p.returncode != 0 and "composite.fit: 'bogus' is not one of cover | stretch" in out, out[-2000:]
        assert _files(project / "data") == [] and _files(project / "logs") == []
    finally:
        run(["git", "checkout", "--", "params.yaml"], project)


@pytest.mark.slow
def test_a_warm_start_file_that_is_not_there_fails_the_dry_run(project: Path) -> None:
    """Snakemake keeps an existing net and drops its training job when the warm-start input
    is missing ("Nothing to be done", exit 0): refused at planning time instead."""
    for cfg, key in (("train={init: models/typo/initial.pt}", "train.init models/typo/initial.pt"),
                     ("train={boundary: {init: /nonexistent/b.pt}}", "train.boundary.init /nonexistent/b.pt")):
        p = run(["snakemake", "-n", "fuse", "--config", cfg], project, check=False)
        out = p.stdout + p.stderr
        assert p.returncode != 0 and f"params.yaml + --config: {key}: model file not found" in out, out[-2000:]
        assert "Job stats" not in out
        # ... but not by a call that plans no job: --unlock is the way out of a killed run
        ok = run(["snakemake", "--unlock", "--config", cfg], project, check=False)
        assert ok.returncode == 0, (ok.stdout + ok.stderr)[-2000:]
    ok = run(["snakemake", "-n", "train_initial", "--config",
              f"train={{initial: {{init: {project / 'params.yaml'}}}}}"], project, check=False)
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-2000:]


@pytest.mark.slow
def test_an_evaluate_folder_that_is_not_there_fails_the_dry_run(project: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate.datasets[].sources: /nonexist passed the dry run, and the evaluate job refused
    it at the end, after training: refused at planning time, naming the key; a folder a rule
    before evaluate makes (data/testset or, once a dataset reads from it, data/download/eval:
    download_eval runs first) passes, one of download_eval under dvc only once it is there, and
    the crop of a folder that is there is checked against its figure pair (the job found it
    after fusing every pair)."""
    import numpy as np
    from PIL import Image

    for cfg, key in (("evaluate={datasets: [{name: testset, sources: data/testset}, {name: x, sources: /nonexist}]}",
                      "evaluate.datasets[1].sources /nonexist: folder not found"),
                     ("evaluate={datasets: [{name: x, sources: data/testset, reference: ../no/ref}]}",
                      "evaluate.datasets[0].reference ../no/ref: folder not found")):
        p = run(["snakemake", "-n", "all", "--config", cfg], project, check=False)
        out = p.stdout + p.stderr
        assert p.returncode != 0 and f"params.yaml + --config: {key}" in out and "Job stats" not in out, out[-2000:]
    pairs = tmp_path / "pairs"
    pairs.mkdir()
    for letter in "AB":
        Image.fromarray(np.full((30, 40, 3), 99, np.uint8)).save(pairs / f"p1-{letter}.png")
    p = run(["snakemake", "-n", "all", "--config", f"evaluate={{datasets: [{{name: x, sources: {pairs}, crop: [20, 0, 16]}}]}}"],
            project, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "evaluate.datasets[0].crop [20, 0, 16]: " in out and "40x30 (WxH)" in out, out[-2000:]
    ok = run(["snakemake", "-n", "all", "--config", f"evaluate={{datasets: [{{name: x, sources: {pairs}, crop: [10, 20, 16]}}]}}"],
             project, check=False)
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-2000:]
    # an unknown figure_pair: the crop was checked against the first pair, named as the figure pair
    for extra in (", crop: [20, 0, 16]", ""):
        cfg = f"evaluate={{datasets: [{{name: x, sources: {pairs}, figure_pair: p9{extra}}}]}}"
        p = run(["snakemake", "-n", "all", "--config", cfg], project, check=False)
        out = p.stdout + p.stderr
        assert p.returncode != 0 and "Job stats" not in out, out[-2000:]
        assert ("params.yaml + --config: evaluate.datasets[0].figure_pair p9: not one of the pairs of dataset 'x' (p1): "
                "the evaluate job would refuse it") in out, out[-2000:]
    # data/download/eval is made by download_eval. Nothing ordered it before evaluate, which reads the
    # dataset folders from its --params-json: `snakemake download_eval all` could evaluate first, and
    # `snakemake all` was refused ("run `snakemake download_eval` first"). It is evaluate's input now that a
    # dataset reads from it: every target that reaches evaluate runs download_eval before it (once
    # download_eval has a source: test_download_eval_without_a_source_is_not_planned_before_evaluate).
    cfg = "evaluate={datasets: [{name: x, sources: data/download/eval/lytro}]}"
    source = f"download={{eval: {{from_dir: {tmp_path}}}}}"
    for targets in (["download_eval", "all"], ["download_eval", "evaluate"], ["all"], ["evaluate"], [],
                    ["metrics/evaluate.json"]):
        ok = run(["snakemake", "-n", *targets, "--config", cfg, source], project, check=False)
        out = ok.stdout + ok.stderr
        assert ok.returncode == 0 and "Job stats" in out, (targets, out[-2000:])
        assert -1 < out.find("rule download_eval:") < out.find("rule evaluate:"), (targets, out[-3000:])
        inputs = out[out.find("rule evaluate:"):].split("output:")[0]
        assert "data/download/eval" in inputs, (targets, inputs)
    for targets in (["download_eval"], ["data/download/eval"], ["download"]):  # passed, and still do
        ok = run(["snakemake", "-n", *targets, "--config", cfg, source], project, check=False)
        assert ok.returncode == 0 and "Job stats" in ok.stdout, (targets, (ok.stdout + ok.stderr)[-2000:])
        assert "rule evaluate:" not in ok.stdout, targets
    # without such a dataset, evaluate does not wait for download_eval
    p = run(["snakemake", "-n", "evaluate"], project, check=False)
    assert p.returncode == 0 and "rule download_eval:" not in p.stdout, (p.stdout + p.stderr)[-2000:]
    # a DVC stage refuses it (no stage runs download_eval: dvc repro never makes the folder); without a
    # source, running download_eval would fail: the refusal says to set one first
    for stage, target in (("download", "download"), ("evaluate", "evaluate")):
        monkeypatch.setenv("DVC_STAGE", stage)
        p = run(["snakemake", "-n", target, "--config", cfg, source], project, check=False)
        assert p.returncode != 0 and ("evaluate.datasets[0].sources data/download/eval/lytro: folder not found (rule "
                                      "download_eval makes it, but no dvc stage runs it: run `snakemake download_eval` "
                                      "first)") in p.stdout + p.stderr, (stage, (p.stdout + p.stderr)[-2000:])
        p = run(["snakemake", "-n", target, "--config", cfg], project, check=False)
        assert p.returncode != 0 and ("folder not found (rule download_eval makes it, but download.eval.base_url and "
                                      "download.eval.from_dir are both empty and no dvc stage runs it: set one and run "
                                      "`snakemake download_eval` first, or fill the folder by hand)") in p.stdout + p.stderr, (
            stage, (p.stdout + p.stderr)[-2000:])
    monkeypatch.delenv("DVC_STAGE")
    lytro = project / "data" / "download" / "eval" / "lytro"
    lytro.mkdir(parents=True)
    try:
        ok = run(["snakemake", "-n", "all", "--config", cfg], project, check=False)
        assert ok.returncode == 0, (ok.stdout + ok.stderr)[-2000:]
    finally:
        import shutil

        shutil.rmtree(project / "data" / "download")


@pytest.mark.slow
def test_download_eval_without_a_source_is_not_planned_before_evaluate(project: Path) -> None:
    """9e3a14e made download_eval's folder an input of evaluate whenever a dataset reads from it.
    With download.eval's base_url and from_dir both empty (the defaults), `snakemake all` then
    planned download_eval, which fails when it runs ("needs a source"), other jobs started
    first; and with the folder filled by hand, `snakemake -F evaluate` reran download_eval,
    which replaces the folder. Without a source: no folder is refused at planning, as before 9e3a14e,
    saying what to do; a folder that is there is used as it is, download_eval not planned."""
    import shutil

    cfg = "evaluate={datasets: [{name: x, sources: data/download/eval/lytro}]}"
    for targets in (["all"], ["evaluate"], ["download_eval", "evaluate"]):
        p = run(["snakemake", "-n", *targets, "--config", cfg], project, check=False)
        out = p.stdout + p.stderr
        assert p.returncode != 0 and "Job stats" not in out, (targets, out[-2000:])
        assert ("evaluate.datasets[0].sources data/download/eval/lytro: folder not found (rule download_eval makes "
                "it, but download.eval.base_url and download.eval.from_dir are both empty: set one and run `snakemake "
                "download_eval`, or fill the folder by hand)") in out, (targets, out[-2000:])
    (project / "data" / "download" / "eval" / "lytro").mkdir(parents=True)
    try:
        for targets in (["all"], ["-F", "evaluate"]):
            ok = run(["snakemake", "-n", *targets, "--config", cfg], project, check=False)
            assert ok.returncode == 0 and "rule evaluate:" in ok.stdout, (targets, (ok.stdout + ok.stderr)[-2000:])
            assert "rule download_eval:" not in ok.stdout, (targets, ok.stdout[-3000:])
    finally:
        shutil.rmtree(project / "data" / "download")


def test_a_dvc_stage_without_a_download_eval_source_says_to_set_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under a DVC stage, a dataset in data/download/eval with download.eval's base_url and
    from_dir both empty was refused with "run `snakemake download_eval` first": advice that
    fails (download_eval needs a source). The refusal says to set one, or fill the folder."""
    from bafusion.cli.params_check import check_evaluate_inputs
    from bafusion.errors import UserError

    monkeypatch.chdir(tmp_path)
    params = {"evaluate": {"datasets": [{"name": "x", "sources": "data/download/eval/lytro"}]}}
    outputs = [("download_eval", "data/download/eval", True)]
    with pytest.raises(UserError) as e:
        check_evaluate_inputs(params, "params.yaml", outputs, {"testset"}, {"evaluate"}, stage="evaluate")
    assert ("evaluate.datasets[0].sources data/download/eval/lytro: folder not found (rule download_eval makes it, "
            "but download.eval.base_url and download.eval.from_dir are both empty and no dvc stage runs it: set one "
            "and run `snakemake download_eval` first, or fill the folder by hand)") in str(e.value), str(e.value)
    # with a source, the advice to run it stands
    params["download"] = {"eval": {"from_dir": str(tmp_path)}}
    with pytest.raises(UserError, match=r"but no dvc stage runs it: run `snakemake download_eval` first\)"):
        check_evaluate_inputs(params, "params.yaml", outputs, {"testset"}, {"evaluate"}, stage="evaluate")


def test_no_dvc_stage_runs_the_rules_said_to_run_in_none() -> None:
    """check_evaluate_inputs refuses, in a DVC stage, a folder that only NO_STAGE_RULES make
    (download_eval: evaluate's input when a dataset reads from it, but never run by dvc repro)."""
    from bafusion.cli.params_check import NO_STAGE_RULES

    cmds = [stage["cmd"] for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values()]
    for rule in NO_STAGE_RULES:
        assert not any(re.search(rf"(?<![\w-]){rule}(?![\w-])", cmd) for cmd in cmds), rule


def _absent_device() -> tuple[str, str]:
    """A device this machine surely lacks and the words of its refusal (skip where it has both)."""
    import torch

    if not torch.cuda.is_available():
        return "cuda", "CUDA is not available"
    mps = getattr(torch.backends, "mps", None)
    if mps is None or not mps.is_available():
        return "mps", "MPS"
    pytest.skip("this machine has both CUDA and MPS")


@pytest.mark.slow
def test_a_device_this_machine_lacks_fails_the_dry_run_of_a_local_run(project: Path) -> None:
    """fuse.device: mps (or cuda without CUDA) passed the dry run, and the fuse job refused it
    after training ("--device mps", an option nobody gave): a local run refuses it at planning
    time naming the key; under a cluster profile the jobs' machines are not known here (also
    Snakemake's implicit workflow profile, profiles/default/profile.yaml), and a run that plans
    no job (--unlock) does not care."""
    device, words = _absent_device()
    for cfg, key in ((f"fuse={{device: {device}}}", f"fuse.device {device}"),
                     (f"train={{boundary: {{device: {device}}}}}", f"train.boundary.device {device}"),
                     (f"evaluate={{device: {device}}}", f"evaluate.device {device}")):
        p = run(["snakemake", "-n", "all", "--config", cfg], project, check=False)
        out = p.stdout + p.stderr
        assert p.returncode != 0 and f"params.yaml + --config: {key}: {words}" in out and "Job stats" not in out, out[-2000:]
    cfg = f"fuse={{device: {device}}}"
    ok = run(["snakemake", "-n", "all", "--profile", "workflow/profiles/slurm-generic", "--config", cfg],
             project, check=False)
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-2000:]
    ok = run(["snakemake", "--unlock", "--config", cfg], project, check=False)
    assert ok.returncode == 0, (ok.stdout + ok.stderr)[-2000:]
    default = project / "profiles" / "default"
    default.mkdir(parents=True)
    try:
        (default / "profile.yaml").write_text((project / "workflow/profiles/slurm-generic/config.yaml").read_text())
        ok = run(["snakemake", "-n", "all", "--config", cfg], project, check=False)
        assert ok.returncode == 0 and "Job stats" in ok.stdout, (ok.stdout + ok.stderr)[-2000:]
    finally:
        import shutil

        shutil.rmtree(project / "profiles")


def test_runs_locally_reads_the_executor_and_the_profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Snakemake's own reading of its command line: its options, its profiles (--profile,
    $SNAKEMAKE_PROFILE, the workflow profile: --workflow-profile, or profiles/default/ used
    unasked, in the working directory or beside the Snakefile; profile.yaml or config.yaml) and
    a software deployment (the jobs' own torch)."""
    from bafusion.cli.params_check import plans_jobs, runs_locally, snakemake_args

    monkeypatch.delenv("SNAKEMAKE_PROFILE", raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "Snakefile").write_text("rule all:\n    output: 'x'\n")

    def local(*argv: str) -> bool:
        return runs_locally(snakemake_args(["snakemake", *argv]))

    assert local("-n", "all")
    assert local("--executor", "local")
    assert not local("--executor", "slurm")
    assert not local("-e", "cluster-generic")
    assert not local("--executor=slurm")
    assert not local("--profile", str(REPO / "workflow/profiles/slurm"))
    assert not local("--prof=" + str(REPO / "workflow/profiles/slurm-generic"))
    assert local("--profile", str(REPO / "workflow/profiles/local"))
    assert not local("--profile", str(tmp_path / "nonexistent"))  # Snakemake refuses it: not known here
    assert not local("-n", "--sdm", "conda")
    assert not local("-n", "--software-deployment-method", "apptainer")
    assert not local("-n", "--use-conda")
    assert not local("-n", "--use-singularity")
    assert local("-n", "--sdm", "env-modules")
    assert not runs_locally(None)
    monkeypatch.setenv("SNAKEMAKE_PROFILE", str(REPO / "workflow/profiles/slurm"))
    assert not local()
    monkeypatch.delenv("SNAKEMAKE_PROFILE")
    slurm = (REPO / "workflow/profiles/slurm-generic/config.yaml").read_text()
    for folder, name in (("profiles/default", "profile.yaml"), ("profiles/default", "config.yaml"),
                         ("profiles/cluster", "profile.yaml")):
        (tmp_path / folder).mkdir(parents=True)
        (tmp_path / folder / name).write_text(slurm)
        argv = ["--workflow-profile", "cluster"] if folder.endswith("cluster") else []
        assert not local("-n", *argv), (folder, name)
        assert local("-n", "--workflow-profile", "none")
        import shutil

        shutil.rmtree(tmp_path / "profiles")
    # beside the Snakefile, run from elsewhere
    (tmp_path / "wf" / "profiles" / "default").mkdir(parents=True)
    (tmp_path / "wf" / "Snakefile").write_text("rule all:\n    output: 'x'\n")
    (tmp_path / "wf" / "profiles" / "default" / "profile.yaml").write_text(slurm)
    assert not local("-n", "-s", str(tmp_path / "wf" / "Snakefile"))
    # -d: Snakemake has moved into that folder when the Snakefile reads its command line, so a
    # relative -s / --profile and the launch folder's profiles/default/ are not known here
    assert not local("-n", "-d", str(tmp_path))
    assert not local("-n", "--directory=" + str(tmp_path))
    # what plans jobs: not --unlock, --cleanup-metadata, --report, --list-*, --touch
    assert plans_jobs(snakemake_args(["snakemake", "-n", "all"])) and plans_jobs(None)
    assert plans_jobs(snakemake_args(["snakemake", "--report", "r.html", "--report-after-run"]))
    for argv in (["--unlock"], ["--unl"], ["--cleanup-metadata", "x"], ["--report", "r.html"], ["--list-rules"],
                 ["--lc", "code"], ["--list-untracked"], ["--summary"], ["-t"], ["--dag"], ["--delete-all-output"]):
        assert not plans_jobs(snakemake_args(["snakemake", *argv])), argv


@pytest.mark.slow
def test_a_warm_start_from_the_pipelines_own_output_fails_the_dry_run(project: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """train.init: data/models/initial.pt (the trained net, to warm-start from it): the dry run
    said nothing (exit 0), the run logged a cycle for train_initial, went on and deleted both
    trained nets. Refused at planning time; the boundary net may start from the initial one
    (with snakemake: not in a DVC stage, train_boundary's does not depend on it), not from a
    file of its checkpoint folder (a raw MissingInputException when not there; no dependency,
    and train_initial rewriting it, when there)."""
    import shutil

    models = project / "data" / "models"
    models.mkdir(parents=True, exist_ok=True)
    made = [models / f"{net}.{ext}" for net in ("initial", "boundary") for ext in ("pt", "json")]
    try:
        for f in made:
            f.write_text("{}")
        best = "train={boundary: {init: data/checkpoints/initial/best.pt}}"
        for cfg, key, rule in (
                ("train={init: data/models/initial.pt}", "train.init data/models/initial.pt", "train_initial"),
                ("train={initial: {init: data/models/boundary.pt}, boundary: {init: data/models/initial.pt}}",
                 "train.initial.init data/models/boundary.pt", "train_boundary"),
                ("train={init: data/checkpoints/initial/last.pt}", "train.init data/checkpoints/initial/last.pt",
                 "train_initial"),
                (best, "train.boundary.init data/checkpoints/initial/best.pt", "train_initial"),
                ("there", "train.boundary.init data/checkpoints/initial/best.pt", "train_initial")):
            if cfg == "there":
                (project / "data" / "checkpoints" / "initial").mkdir(parents=True)
                (project / "data" / "checkpoints" / "initial" / "best.pt").write_text("{}")
                cfg = best
            p = run(["snakemake", "-n", "all", "--config", cfg], project, check=False)
            out = p.stdout + p.stderr
            assert p.returncode != 0 and "Job stats" not in out and "Exception" not in out, out[-2000:]
            assert f"params.yaml + --config: {key}: is the pipeline's own output (rule {rule} writes" in out, out[-2000:]
        ok = run(["snakemake", "-n", "all", "--config", "train={boundary: {init: data/models/initial.pt}}"],
                 project, check=False)
        assert ok.returncode == 0, (ok.stdout + ok.stderr)[-2000:]
        monkeypatch.setenv("DVC_STAGE", "train_boundary")
        p = run(["snakemake", "-n", "train_boundary", "--config", "train={boundary: {init: data/models/initial.pt}}"],
                project, check=False)
        out = p.stdout + p.stderr
        assert p.returncode != 0 and ("train.boundary.init data/models/initial.pt: the model of rule train_initial is a "
                                      "warm start under snakemake only: in dvc.yaml the train_boundary stage does not "
                                      "depend on it") in out, out[-2000:]
    finally:
        for f in made:
            f.unlink()
        shutil.rmtree(project / "data" / "checkpoints", ignore_errors=True)


@pytest.mark.slow
def test_a_bad_value_of_a_configfile_names_it(project: Path) -> None:
    # `snakemake -n --configfile bad.yaml` blamed params.yaml for bad.yaml's value
    bad = project.parent / "bad.yaml"
    bad.write_text("patch: 30\n")
    p = run(["snakemake", "-n", "all", "--configfile", str(bad)], project, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and f"params.yaml + {bad}: patch: 30 is not a multiple of 4 >= 8" in out, out[-2000:]
    p = run(["snakemake", "-n", "all", "--configfile", str(bad), "--config", "seed=1"], project, check=False)
    assert f"params.yaml + {bad} + --config: patch: 30" in p.stdout + p.stderr


def test_whole_numbers_written_as_floats_are_ints() -> None:
    """16.0 where the schema wants an integer passed every check as a float, then crashed
    (np.pad's pad_width in the fusion) or was refused late (argparse: --seed 1.0): it is the int."""
    p = validate_params({
        "seed": 1.0, "patch": 32.0, "depth": 20.0, "patches": {"per_pair": 6.0},
        "fuse": {"dense_margin": 16.0, "initial_step": 4.0, "boundary_step": 16.0, "initial_grid_step": 8.0,
                 "working_side": 0.0, "working_min": 512.0, "low": 0.0, "scales": (1.0, 0.5)},
        "train": {"milestones": [2.0], "lr": 1.0, "nproc": 2.0, "initial": {"epochs": 5.0}},
        "composite": {"sigma": [1.0, 2.0], "realistic": {"jpeg": [0.0, 90.0]}},
        "evaluate": {"datasets": [{"name": "x", "sources": "y", "crop": [0.0, 1.0, 64.0], "jpeg_quality": {"a": 90.0}}]},
    })
    ints = [p["seed"], p["patch"], p["depth"], p["patches"]["per_pair"], *p["train"]["milestones"], p["train"]["nproc"],
            p["train"]["initial"]["epochs"], *p["composite"]["realistic"]["jpeg"], *p["evaluate"]["datasets"][0]["crop"],
            p["evaluate"]["datasets"][0]["jpeg_quality"]["a"],
            *(p["fuse"][k] for k in ("dense_margin", "initial_step", "boundary_step", "initial_grid_step",
                                     "working_side", "working_min"))]
    assert all(type(v) is int for v in ints), ints
    assert (p["seed"], p["fuse"]["dense_margin"], p["evaluate"]["datasets"][0]["crop"]) == (1, 16, [0, 1, 64])
    # a number stays a float where the schema takes any number
    floats = [p["fuse"]["low"], *p["fuse"]["scales"], p["train"]["lr"], *p["composite"]["sigma"]]
    assert all(type(v) is float for v in floats), floats
    # not a whole number: refused; a whole float is checked as its int (x-resnet-depth skipped floats)
    with pytest.raises(ParamsError, match=r"^params\.yaml: patch: 16\.5 is not a "):
        validate_params({"patch": 16.5})
    with pytest.raises(ParamsError, match=r"^params\.yaml: depth: 21 is not a ResNet depth 6n\+2"):
        validate_params({"depth": 21.0})


@pytest.mark.slow
def test_whole_floats_reach_the_rules_as_ints(project: Path) -> None:
    """seed: 1.0 passed `snakemake -n`, then the prepare job failed (argparse: invalid int
    value: '1.0'); per_pair: 6.0 likewise at the patches job."""
    good = (project / "params.yaml").read_text()
    try:
        (project / "params.yaml").write_text(yaml.safe_dump(deep_merge(
            yaml.safe_load(good), {"seed": 1.0, "patch": 16.0, "patches": {"per_pair": 6.0}})))
        assert "seed: 1.0" in (project / "params.yaml").read_text()
        p = run(["snakemake", "-n", "-p", "patches"], project, check=False)
    finally:
        (project / "params.yaml").write_text(good)
    out = p.stdout + p.stderr
    assert p.returncode == 0, out[-2000:]
    assert "bafusion prepare " in out and "--seed 1 " in out and "--seed 1.0" not in out, out[-3000:]
    assert "--patch 16 " in out and "--per-pair 6 " in out, out[-3000:]


def test_a_key_given_twice_is_refused_naming_it(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A second `train:` appended to params.yaml replaced the whole section (PyYAML keeps the
    last key): lr, batch, ... back to the schema's defaults, silently."""
    from bafusion.config import load_yaml
    from bafusion.errors import InputFileError

    f = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    first = next(i for i, line in enumerate(text.splitlines(), 1) if line.startswith("train:"))
    f.write_text(text + "train:\n  epochs: 50\n")
    last = len(text.splitlines()) + 1
    words = f"params.yaml: invalid YAML: duplicate key 'train' on line {last} (first on line {first})"
    with pytest.raises(InputFileError, match=re.escape(words)):
        load_params(f)
    rc = cli.main(["count", "--params", str(f)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.count("\n") == 0 and words in err, err
    with pytest.raises(yaml.YAMLError, match=r"duplicate key 'lr' on line 3 \(first on line 2\)"):
        load_yaml("train:\n  lr: 0.1\n  lr: 0.2\n")
    # a merge key's values may be overridden, as YAML allows
    assert load_yaml("a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  b: 3\n")["d"] == {"b": 3, "c": 2}
    # also in an anchored mapping met first through a later alias's merge: PyYAML rewrote its
    # merge key in place into the keys it merges, which read as its own ('duplicate key 'x'')
    text = "base: &b {x: 1, y: 2}\ndefs:\n  c: &c {<<: *b, x: 2}\nuse: {<<: *c}\n"
    assert load_yaml(text) == yaml.safe_load(text)
    assert load_yaml(text)["defs"]["c"] == {"x": 2, "y": 2}
    for twice, line in [("b: &b {x: 1}\nu: {<<: *b, y: 1,\n  y: 2}\n", 3), ("b: &b {x: 1,\n  x: 3}\nu: {<<: *b}\n", 2),
                        ("b: &b {x: 1}\nc: &c {<<: *b, y: 1,\n  y: 2}\nu: {<<: *c}\n", 3)]:
        with pytest.raises(yaml.YAMLError, match=rf"duplicate key '[xy]' on line {line} "):
            load_yaml(twice)


@pytest.mark.slow
def test_a_key_given_twice_fails_snakemake_dry_run(project: Path) -> None:
    p = _dry_run_with(project, {}, lambda text: text + "train:\n  epochs: 50\n")
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "params.yaml: invalid YAML: duplicate key 'train' on line" in out, out[-2000:]
    assert "Job stats" not in out and "Error in file" not in out and 'File "' not in out, out[-2000:]
    extra = project.parent / "twice.yaml"
    extra.write_text("seed: 1\nseed: 2\n")
    p = run(["snakemake", "-n", "all", "--configfile", str(extra)], project, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and f"{extra}: invalid YAML: duplicate key 'seed' on line 2 (first on line 1)" in out, \
        out[-2000:]


@pytest.mark.slow
def test_a_params_yaml_of_nested_aliases_fails_snakemake_dry_run_at_once(project: Path) -> None:
    """Snakemake's reader keeps a params.yaml's aliases shared; common.smk then walked the
    config (yaml12_floats) before the package's reader (aliases capped) read the file: with
    ``*a7`` (10**8 values) this test took 107 s, 10 s with the capped read first (one run each,
    loaded 2-core machine; ``*a8`` ran past a 120 s timeout)."""
    import time

    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 8)]
    t0 = time.monotonic()
    p = _dry_run_with(project, {}, lambda text: text + "\n".join(lines) + "\n")
    took = time.monotonic() - t0
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "params.yaml: invalid YAML: its aliases stand for more than 100000 values" in out, \
        out[-2000:]
    assert "Error in file" not in out and 'File "' not in out, out[-2000:]
    assert took < 60, took


def test_the_largest_seed_is_one_every_consumer_takes(tmp_path: Path) -> None:
    """2^64 passed the schema, then the patches job failed (HDF5: object dtype) and the
    training (torch: overflow of seed + 1); the schema's maximum works in both."""
    import h5py
    import numpy as np
    import torch

    top = load_schema()["properties"]["seed"]["maximum"]
    assert top == 2**63 - 1 and problems({"seed": top}) == [] and problems({"seed": top + 1})
    torch.Generator().manual_seed(top + 1)  # the trainer's validation subset
    torch.manual_seed(top)
    np.random.default_rng([top, 3, 2])
    with h5py.File(tmp_path / "p.h5", "w") as f:
        f.attrs["seed"] = top
    with h5py.File(tmp_path / "p.h5") as f:
        assert int(f.attrs["seed"]) == top


@pytest.mark.parametrize("key", ["threshold", "boundary_weight", "min_region", "flat_level"])
@pytest.mark.parametrize("nan", [float("nan"), "f64", "f32", "f16"])
def test_nan_of_any_float_type_is_refused(key: str, nan: object) -> None:
    import numpy as np

    from bafusion.fusion import FusionParams

    value = nan if isinstance(nan, float) else getattr(np, {"f64": "float64", "f32": "float32", "f16": "float16"}[nan])("nan")
    (found,) = problems({"fuse": {key: value}})
    assert re.fullmatch(rf"fuse\.{key}: \S*(NaN|nan)\S* is not a number", found), found
    with pytest.raises(ParamsError, match=rf"fuse\.{key}: \S*(NaN|nan)\S* is not a number"):
        FusionParams(**{key: value})


@pytest.mark.parametrize("value", [[1.0, 2.0], {"a": 1}])
def test_a_list_or_mapping_where_a_number_goes_is_one_line(value: object) -> None:
    """``fuse: {alpha: [1, 2]}`` raised TypeError (unhashable type: 'list') from the finite-number
    check, which had taken the validator's cache decorator (and the validator was rebuilt per call)."""
    from bafusion.schema import _validator

    (found,) = problems({"fuse": {"alpha": value}})
    assert found.startswith("fuse.alpha: ") and "is not a number" in found, found
    assert _validator() is _validator()  # built once


@pytest.mark.parametrize("section", ["fuse", "evaluate"])
def test_the_difference_map_gain_is_at_most_255(section: str) -> None:
    """alpha had no maximum: 1e308 passed, and alpha * |B - F| overflowed (numpy RuntimeWarning).
    The maps are 8-bit gray differences clipped to 255: from alpha 255 up every pixel that
    differs by one level is white, the same map, so 255 is the largest gain."""
    import numpy as np

    from bafusion.fusion.maps import difference_map

    assert problems({section: {"alpha": 255}}) == []
    assert problems({section: {"alpha": 1e308}}) == [f"{section}.alpha: 1e+308 is not a number <= 255"]
    b = np.arange(256, dtype=np.uint8).reshape(16, 16)
    f = np.roll(b, 1)
    assert np.array_equal(difference_map(b, f, 255.0), difference_map(b, f, 1e6))  # nothing above 255 differs


def test_numpy_scalars_are_taken_as_python_scalars() -> None:
    """A grid search over np.arange / np.linspace gives numpy scalars: each is taken as the
    Python value it holds (np.int64(4) as 4, np.bool_(True) as True), on every path alike."""
    import numpy as np

    from bafusion.fusion import FusionParams
    from bafusion.fusion.rule import checked_params
    from bafusion.schema import validate_params

    fuse = {"l": np.int64(4), "refine": np.bool_(True), "working_min": np.int64(0), "threshold": np.float32(0.25),
            "tta": np.str_("swap")}
    params = validate_params({"fuse": dict(fuse), "patch": np.int32(16)})
    assert params["fuse"] == {"l": 4, "refine": True, "working_min": 0, "threshold": 0.25, "tta": "swap"}
    assert type(params["fuse"]["l"]) is int and type(params["fuse"]["refine"]) is bool
    assert type(params["fuse"]["threshold"]) is float and type(params["patch"]) is int
    for p in (FusionParams(l=np.int32(4), refine=np.bool_(False)), checked_params({"l": np.int64(4)})):
        assert p.l == 4 and type(p.l) is int
    assert type(FusionParams(refine=np.bool_(False)).refine) is bool
    with pytest.raises(ParamsError, match=r"fuse\.l: 4\.5 is not an integer"):
        FusionParams(l=np.float32(4.5))
    with pytest.raises(ParamsError, match=r"fuse\.threshold: NaN is not a number"):
        FusionParams(threshold=np.float32("nan"))


def test_shipped_benchmark_and_model_params_validate() -> None:
    for f in [*sorted((REPO / "benchmarks").glob("*.yaml")), *sorted((REPO / "models").glob("*/evaluate.yaml"))]:
        assert problems(yaml.safe_load(f.read_text()) or {}) == [], f


@pytest.mark.parametrize(("params", "message"), [
    ({"fuse": {"threads": 10**12}}, "fuse.threads: 1000000000000 is not an integer <= 1024"),
    ({"train": {"threads": 10**12}}, "train.threads: 1000000000000 is not an integer <= 1024"),
    ({"train": {"initial": {"threads": 2000}}}, "train.initial.threads: 2000 is not an integer <= 1024"),
    ({"evaluate": {"threads": 10**12}}, "evaluate.threads: 1000000000000 is not an integer <= 1024"),
    ({"fuse": {"l": 10**12}}, "fuse.l: 1000000000000 is not an integer <= 256"),
    ({"composite": {"sigma": [1.0, 1e12]}}, "composite.sigma[1]: 1000000000000.0 is not a number <= 64"),
    *[({sec: {k: v}}, f"{sec}.{k.replace('/', '.')}: {s} is not a finite number")
      for v, s in ((float("inf"), "inf"), (float("-inf"), "-inf"))
      for sec, k in (("train", "lr"), ("train", "weight_decay"), ("fuse", "alpha"), ("fuse", "scale_confidence"))],
    ({"download": {"net": {"timeout": float("inf")}}}, "download.net.timeout: inf is not a finite number"),
    ({"download": {"net": {"backoff": float("inf")}}}, "download.net.backoff: inf is not a finite number"),
    ({"download": {"coco": {"oversample": float("inf")}}}, "download.coco.oversample: inf is not a finite number"),
])
def test_values_that_crash_or_mislead_are_refused(params: dict, message: str) -> None:
    """Huge thread counts crashed torch.set_num_threads, a huge l or sigma ended in an out-of-
    memory message, inf passed every lower bound: each is now one line naming the key."""
    assert problems(params) == [message]


@pytest.mark.parametrize("key", ["lr", "weight_decay"])
def test_a_learning_rate_or_weight_decay_above_float32_is_refused(key: str) -> None:
    """``train.lr: 1e300`` (and ``weight_decay``) passed the schema and ``snakemake -n``; the
    first SGD step then died with an "internal error" (torch takes them as float32 factors:
    "value cannot be converted to type float without overflow"). The bound is float32's
    largest number: torch's SGD takes it (the training then diverges, which the trainer
    says), and refuses the next double."""
    import math

    import numpy as np
    import torch

    top = float(np.finfo(np.float32).max)
    assert problems({"train": {key: top}}) == [] == problems({"train": {"initial": {key: top}}})
    (found,) = problems({"train": {"boundary": {key: 1e300}}})
    assert found.startswith(f"train.boundary.{key}: 1e+300 is not a number ") and "3.4028234663852886e+38" in found
    assert problems({"train": {key: float("inf")}}) == [f"train.{key}: inf is not a finite number"]  # the x-rule aside
    for value, ok in ((top, True), (math.nextafter(top, math.inf), False)):
        p = torch.nn.Parameter(torch.ones(2))
        opt = torch.optim.SGD([p], **({"lr": value} if key == "lr" else {"lr": 0.01, "weight_decay": value}))
        p.sum().backward()
        if ok:
            opt.step()
        else:
            with pytest.raises(RuntimeError, match="overflow"):
                opt.step()


def test_a_pair_given_twice_in_a_dataset_is_refused() -> None:
    """``evaluate.datasets[].pairs: [g01-clock, g01-clock, g02-pepsi]`` was evaluated: the table
    said 2 pairs, but the mean (and the wins) counted g01-clock twice."""
    ds = {"name": "classic", "sources": "s", "pairs": ["g01-clock", "g01-clock", "g02-pepsi"]}
    assert problems({"evaluate": {"datasets": [ds]}}) == [
        'evaluate.datasets[0].pairs: ["g01-clock", "g01-clock", "g02-pepsi"] is not a list without repeated items']
    assert problems({"evaluate": {"datasets": [{**ds, "pairs": ["g01-clock", "g02-pepsi"]}]}}) == []


def test_a_checksum_of_the_wrong_length_is_refused_as_the_download_job_refuses_it() -> None:
    """`sha256:abc` and `md5:abc` passed the schema and `snakemake -n`; only the download job
    refused them, once running (beside the other download rule): the schema now wants each
    algorithm's digest length, accepting what the job's Checksum.parse accepts (sha512 too)."""
    from bafusion.data.download import HEX_DIGITS, Checksum
    from bafusion.errors import UserError

    rule = "is not a checksum md5:<32 hex digits>, sha1:<40>, sha256:<64> or sha512:<128> (or empty)"
    assert problems({"download": {"coco": {"annotations_checksum": "sha256:abc"},
                                  "alphamatting": {"checksums": {"GT01": "md5:abc"}}}}) == [
        f"download.alphamatting.checksums.GT01: 'md5:abc' {rule}",
        f"download.coco.annotations_checksum: 'sha256:abc' {rule}"]
    for algo, n in HEX_DIGITS.items():
        for digits in (n - 1, n, n + 1, 32, 40, 64, 128):
            text = f"{algo}:" + "aF" * (digits // 2) + "0" * (digits % 2)
            try:
                job = Checksum.parse(text) is not None
            except UserError:
                job = False
            schema = problems({"download": {"coco": {"annotations_checksum": text}}}) == []
            assert schema == job == (digits == n), (text, schema, job)
    assert problems({"download": {"coco": {"annotations_checksum": ""}}}) == []


def test_numpy_inf_is_refused() -> None:
    import numpy as np

    from bafusion.fusion import FusionParams

    with pytest.raises(ParamsError, match=r"fuse\.scale_confidence: inf is not a finite number"):
        FusionParams(scale_confidence=np.float32("inf"))


def test_a_huge_integer_is_refused_by_its_bound_not_an_overflow() -> None:
    """The finite-number check must not convert integers to float: ``10**400`` raised
    OverflowError (a traceback) instead of the seed's bound."""
    from bafusion import schema

    with pytest.raises(ParamsError, match=r"seed: 1000\d+\.\.\. \(401 digits\) is not an integer from 0 to 2\^63"):
        schema.validate_params({"seed": 10**400})


def test_the_depth_maximum_is_the_nets_own() -> None:
    """The schema bounds depth as :class:`bafusion.nets.model.ResNetSpec` does (it did not:
    a depth above 1202 passed every check, then failed building the net)."""
    from bafusion.nets.model import MAX_DEPTH
    from bafusion.schema import maximum

    assert maximum("depth") == MAX_DEPTH
    assert problems({"depth": MAX_DEPTH}) == [] and problems({"depth": MAX_DEPTH + 6})


@pytest.mark.slow
def test_the_warm_start_rules_input_given_with_a_tilde_is_the_home_folders(tmp_path: Path) -> None:
    """train.init: ~/m.pt is the home folder's model file in the Snakemake rule too (common.smk's
    init_input): its input is the expanded path, which exists; kept as written, Snakemake refuses
    it ("Missing input files(Using '~' in your paths is not allowed ...) for rule train_initial")."""
    import subprocess

    from pipeline_project import env

    home = tmp_path / "home"
    home.mkdir()
    (home / "m.pt").write_bytes(b"a model file")  # the dry run only checks that it is there
    project = make_project(tmp_path / "p", {"train": {"init": "~/m.pt"}}, git=False)
    p = subprocess.run(["snakemake", "-n", "--cores", "1", "train_initial"], cwd=project, capture_output=True,
                       text=True, timeout=300, env={**env(), "HOME": str(home)})
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "rule train_initial:" in out, out[-3000:]
    block = out[out.index("rule train_initial:"):]
    inputs = next(line for line in block.splitlines() if line.strip().startswith("input:"))
    assert str(home / "m.pt") in inputs and "~" not in inputs, inputs
    assert not (project / "~").exists()


def test_a_scale_confidence_above_float32_is_refused() -> None:
    """``fuse.scale_confidence: 1e300`` with ``scale_rule: fill`` printed numpy's "RuntimeWarning:
    overflow encountered in cast" in every fusion (the confidence is compared with float32
    logits). The bound is float32's largest number, which compares without a warning."""
    import warnings

    import numpy as np

    from bafusion.fusion.scoring import combine_scales

    top = float(np.finfo(np.float32).max)
    assert problems({"fuse": {"scale_confidence": top}}) == []
    (found,) = problems({"fuse": {"scale_confidence": 1e300}})
    assert found.startswith("fuse.scale_confidence: 1e+300 is not a number ") and "3.4028234663852886e+38" in found
    z = [np.float32([[3.0, -1.0]]), np.float32([[1.0, 1.0]])]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert combine_scales(z, "fill", top).tolist() == [[2.0, 0.0]]  # never confident: the mean
        with pytest.raises(RuntimeWarning, match="overflow"):
            combine_scales(z, "fill", 1e300)


#: evaluate's outputs, and its benchmark (a missing or older one reruns it too).
EVALUATE_OUTPUTS = ("data/evaluation", "metrics/evaluate.json", "metrics/plots/evaluate.csv", "logs/benchmarks/evaluate.tsv")
#: `snakemake evaluate` as the DVC stage runs it, dry.
EVALUATE_DRY_RUN = ["snakemake", "evaluate", "-n", "--cores", "1", "--rerun-triggers", "mtime", "--allowed-rules", "evaluate"]


def _evaluated_project(tmp_path: Path, dataset: dict) -> Path:
    """A project configured with ``dataset``, every output up to evaluate's in place, all made
    10,000 s ago, and evaluate's outputs made now: evaluated after its dataset's files were last
    changed, their ctimes (which os.utime sets to now) included. Its listing is not there yet."""
    import time

    project = make_project(tmp_path / "p", {"evaluate": {"datasets": [dataset]}}, git=False)
    for d in ("data/fused", "data/testset", "data/evaluation"):
        (project / d).mkdir(parents=True)
    for f in ("data/models/initial.pt", "data/models/initial.json", "data/models/boundary.pt",
              "data/models/boundary.json", *EVALUATE_OUTPUTS[1:]):
        (project / f).parent.mkdir(parents=True, exist_ok=True)
        (project / f).write_text("{}")
    base = time.time() - 10_000
    for p in [*(project / "data").rglob("*"), *(project / "metrics").rglob("*")]:
        os.utime(p, (base, base))
    now = time.time()
    for f in EVALUATE_OUTPUTS:
        os.utime(project / f, (now, now))
    return project


def _evaluated(project: Path) -> bool:
    """"evaluate ran", if it was to run (said so): a run, `snakemake evaluate --touch` as the DVC
    stage runs it, which rewrites the listing when it changed and then, if evaluate is to run,
    makes its outputs newer (its benchmark, which --touch leaves, made as new)."""
    p = run(["snakemake", "evaluate", "--touch", "--cores", "1", "--rerun-triggers", "mtime", "--allowed-rules",
             "evaluate"], project)
    ran = "rule evaluate:" in p.stdout + p.stderr
    if ran:
        t = (project / EVALUATE_OUTPUTS[1]).stat().st_mtime_ns
        os.utime(project / EVALUATE_OUTPUTS[3], ns=(t, t))
    return ran


def test_any_change_to_a_configured_datasets_files_reruns_evaluate_as_the_dvc_stage_runs_it(tmp_path: Path) -> None:
    """evaluate.datasets' folders reach the command through --params-json only. Their files were
    the rule's inputs, which under --rerun-triggers mtime (the DVC stage's command) saw only a
    newer mtime: a removed image, one copied in with its old mtime (`cp -p`), a renamed one, or
    an edit to a file named with braces (which stood for its folder) left "Nothing to be done"
    and Table 1 stale. The rule's input is now a listing of the files (name, size, mtime),
    rewritten when it changes: each such change reruns evaluate, and nothing else does. Here as
    the DVC stage runs it (--rerun-triggers mtime, --allowed-rules evaluate), every upstream
    output in place; "evaluate ran" is simulated by a run with --touch (see _evaluated)."""
    import shutil
    import time

    from PIL import Image

    mine = tmp_path / "mine"
    img = Image.new("RGB", (16, 16))
    for f in ("pairs/p1-A.png", "pairs/p1-B.png", "pairs/p{x}-A.png", "pairs/p{x}-B.png", "ref/Max/p1.png",
              "ref/Max/p2.png", "ref/Max/p{x}.png"):
        (mine / f).parent.mkdir(parents=True, exist_ok=True)
        img.save(mine / f)
    base = time.time() - 10_000  # every simulated time in the past: a rewritten listing is newer
    for p in mine.rglob("*"):
        os.utime(p, (base, base))
    project = _evaluated_project(tmp_path, {"name": "mine", "sources": str(mine / "pairs"), "reference": str(mine / "ref"),
                                            "reference_methods": ["Max"]})
    listing = project / "data" / "evaluate-inputs.json"
    p = run(EVALUATE_DRY_RUN, project, check=False)
    assert "Nothing to be done" in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]
    assert not _evaluated(project) and listing.exists()  # made as old as what it lists: nothing reruns

    def touched(f: Path, step: int) -> None:  # after the last run, before the next
        os.utime(f, (base + 20 * step + 1,) * 2)

    changes = [
        ("a result replaced", lambda k: touched(mine / "ref" / "Max" / "p1.png", k)),
        ("a pair fixed", lambda k: touched(mine / "pairs" / "p1-B.png", k)),
        ("a result removed", lambda k: (mine / "ref" / "Max" / "p2.png").unlink()),
        ("a pair copied in with its mtime", lambda k: [shutil.copy2(mine / "pairs" / f"p1-{s}.png",
                                                                    mine / "pairs" / f"p3-{s}.png") for s in "AB"]),
        ("a result renamed", lambda k: (mine / "ref" / "Max" / "p1.png").rename(mine / "ref" / "Max" / "p3.png")),
        ("a file named with braces edited", lambda k: touched(mine / "pairs" / "p{x}-A.png", k)),
    ]
    for step, (what, change) in enumerate(changes, 1):
        change(step)
        p = run(EVALUATE_DRY_RUN, project, check=False)
        out = p.stdout + p.stderr
        assert "rule evaluate:" in out, (what, out[-3000:])
        assert _evaluated(project), what
        p = run(EVALUATE_DRY_RUN, project, check=False)  # after the run: nothing to do
        assert "Nothing to be done" in p.stdout + p.stderr, (what, (p.stdout + p.stderr)[-3000:])
    assert "p{x}-A.png" in listing.read_text() and "p3-A.png" in listing.read_text()  # by name, braces and all


def test_a_dry_run_leaves_the_evaluate_listing_alone(tmp_path: Path) -> None:
    """A dry run rewrote data/evaluate-inputs.json: pairs added, `snakemake -n evaluate`, removed
    again, and the listing read as at the last run, but its newer mtime reran evaluate for nothing.
    A dry run writes a listing that differs to .snakemake/evaluate-inputs.dry-run.json and takes
    that as the input, so it still shows evaluate to run; only a run rewrites the listing."""
    from PIL import Image

    mine = tmp_path / "mine"
    mine.mkdir()
    img = Image.new("RGB", (16, 16))
    for f in ("p1-A.png", "p1-B.png"):
        img.save(mine / f)
    project = _evaluated_project(tmp_path, {"name": "mine", "sources": str(mine)})
    listing = project / "data" / "evaluate-inputs.json"
    _evaluated(project)
    made = listing.read_text(), listing.stat().st_mtime_ns
    for f in ("p2-A.png", "p2-B.png"):
        img.save(mine / f)
    p = run(EVALUATE_DRY_RUN, project, check=False)
    out = p.stdout + p.stderr
    assert "rule evaluate:" in out, out[-3000:]
    (inputs,) = [line.split("input: ", 1)[1].split(", ") for line in out.splitlines() if "input: data/fused, " in line]
    assert inputs[-1] == ".snakemake/evaluate-inputs.dry-run.json", inputs
    assert "p2-A.png" in (project / inputs[-1]).read_text()
    assert (listing.read_text(), listing.stat().st_mtime_ns) == made  # left alone
    for f in ("p2-A.png", "p2-B.png"):
        (mine / f).unlink()
    p = run(EVALUATE_DRY_RUN, project, check=False)  # as at the last run
    out = p.stdout + p.stderr
    assert "Nothing to be done" in out, out[-3000:]
    assert (listing.read_text(), listing.stat().st_mtime_ns) == made
    img.save(mine / "p2-A.png")
    img.save(mine / "p2-B.png")
    assert _evaluated(project) and "p2-A.png" in listing.read_text()  # a run rewrites it


def test_a_file_copied_in_with_its_old_mtime_before_the_listing_was_made_reruns_evaluate(tmp_path: Path) -> None:
    """The listing, made (a project that evaluated before it existed), took the newest mtime of
    what it lists: a pair replaced after the last run by `cp -p` (its old mtime kept, its folder's
    mtime unchanged) left it older than evaluate's outputs, and Table 1 stale. It takes the newest
    mtime or ctime: the copy's ctime is when it was copied. (Without the copy, the same project
    reruns nothing: test_any_change_to_a_configured_datasets_files_reruns_evaluate_...)"""
    import subprocess
    import time

    from PIL import Image

    mine, old = tmp_path / "mine", tmp_path / "old"
    mine.mkdir()
    old.mkdir()
    for f in ("p1-A.png", "p1-B.png"):
        Image.new("RGB", (16, 16)).save(mine / f)
    Image.new("RGB", (16, 16), (9, 9, 9)).save(old / "p1-B.png")
    base = time.time() - 10_000
    for p in [*old.rglob("*"), *mine.rglob("*"), mine]:
        os.utime(p, (base, base))
    project = _evaluated_project(tmp_path, {"name": "mine", "sources": str(mine)})  # up to date (see the docstring)
    time.sleep(0.1)  # past the kernel's coarse clock (ctimes) tick
    subprocess.run(["cp", "-p", str(old / "p1-B.png"), str(mine / "p1-B.png")], check=True)
    assert (mine / "p1-B.png").stat().st_mtime == mine.stat().st_mtime == base
    p = run(EVALUATE_DRY_RUN, project, check=False)
    assert "rule evaluate:" in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]
    assert _evaluated(project)  # a run makes it, and evaluate runs
    p = run(EVALUATE_DRY_RUN, project, check=False)
    assert "Nothing to be done" in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]


def test_a_file_named_with_braces_in_a_configured_dataset_does_not_fail_the_dag(tmp_path: Path) -> None:
    """The evaluate rule's inputs listed the configured datasets' files, and Snakemake formats an
    input function's paths with the job's wildcards: a file p{x}-A.png in a dataset's folder
    failed every DAG holding evaluate (`snakemake -n`, the default target) with "Wildcards in
    input files cannot be determined from output files". The files are listed in
    data/evaluate-inputs.json now, by name, and no input path holds a brace (a dry run's listing,
    .snakemake/evaluate-inputs.dry-run.json, here; a run's, data/evaluate-inputs.json)."""
    from PIL import Image

    mine = tmp_path / "mine"
    (mine / "ref" / "Max").mkdir(parents=True)
    img = Image.new("RGB", (16, 16))
    for f in ("p{x}-A.png", "p{x}-B.png", "p1-A.png", "p1-B.png"):
        img.save(mine / f)
    img.save(mine / "ref" / "Max" / "p{x}.png")
    project = make_project(tmp_path / "p", {"evaluate": {"datasets": [
        {"name": "mine", "sources": str(mine), "reference": str(mine / "ref"), "reference_methods": ["Max"]}]}},
        git=False)
    p = run(["snakemake", "evaluate", "-n", "--cores", "1"], project, check=False)
    out = p.stdout + p.stderr
    assert p.returncode == 0 and "WildcardError" not in out, out[-3000:]
    inputs = [line.split("input: ", 1)[1].split(", ") for line in out.splitlines() if "input: data/fused, " in line]
    assert len(inputs) == 1, out[-3000:]
    assert ".snakemake/evaluate-inputs.dry-run.json" in inputs[0] and not any("{" in f for f in inputs[0]), inputs
    p = run(["snakemake", "evaluate", "--touch", "--cores", "1"], project, check=False)  # a run
    assert p.returncode == 0 and "WildcardError" not in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]
    for listing in (".snakemake/evaluate-inputs.dry-run.json", "data/evaluate-inputs.json"):
        listed = json.loads((project / listing).read_text())["datasets"][0]
        assert listed["sources"]["path"] == str(mine) and set(listed["sources"]["files"]) == {
            "p{x}-A.png", "p{x}-B.png", "p1-A.png", "p1-B.png"}, listing
        assert set(listed["reference"]["files"]) == {"Max/p{x}.png"}, listing


@pytest.mark.parametrize(("how", "listing"), [("--touch", "data/evaluate-inputs.json"),
                                              ("-n", ".snakemake/evaluate-inputs.dry-run.json")])
def test_the_evaluate_listing_leaves_no_temporary_file_when_its_write_fails(tmp_path: Path, how: str, listing: str) -> None:
    """data/evaluate-inputs.json was written through `<listing>.<pid>.tmp`, a name that repeats
    across the nodes of a shared disk and stayed behind when the rename failed. It is now a
    temporary of its own (mkstemp), removed on failure: here the rename meets a folder in the
    listing's place (a run's; a dry run's), and the DAG fails without leaving a temporary beside it."""
    from PIL import Image

    mine = tmp_path / "mine"
    mine.mkdir()
    img = Image.new("RGB", (16, 16))
    for f in ("p1-A.png", "p1-B.png"):
        img.save(mine / f)
    project = make_project(tmp_path / "p", {"evaluate": {"datasets": [{"name": "mine", "sources": str(mine)}]}},
                           git=False)
    (project / listing).mkdir(parents=True)  # the rename cannot replace it
    p = run(["snakemake", "evaluate", how, "--cores", "1"], project, check=False)
    assert p.returncode != 0 and f"{Path(listing).name}'" in p.stdout + p.stderr, (p.stdout + p.stderr)[-3000:]
    left = sorted(f.name for f in (project / listing).parent.iterdir() if "evaluate-inputs" in f.name)
    assert left == [Path(listing).name], left


@pytest.mark.parametrize(("how", "listing"), [("--touch", "data/evaluate-inputs.json"),
                                              ("-n", ".snakemake/evaluate-inputs.dry-run.json")])
def test_the_evaluate_listing_has_the_permission_bits_of_a_plain_file(tmp_path: Path, how: str, listing: str) -> None:
    """The listing's temporary was made by tempfile.mkstemp, whose file is mode 600 whatever the
    umask: data/evaluate-inputs.json became unreadable to the other users of a shared project
    (their `snakemake` then took it for absent and wrote it as old as what it lists). It has the
    mode a plain open() gives, the umask's, as bafusion.atomic's files."""
    import stat

    from PIL import Image

    mine = tmp_path / "mine"
    mine.mkdir()
    img = Image.new("RGB", (16, 16))
    for f in ("p1-A.png", "p1-B.png"):
        img.save(mine / f)
    project = make_project(tmp_path / "p", {"evaluate": {"datasets": [{"name": "mine", "sources": str(mine)}]}},
                           git=False)
    mask = os.umask(0o022)
    try:
        p = run(["snakemake", "evaluate", how, "--cores", "1"], project, check=False)
    finally:
        os.umask(mask)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    mode = (project / listing).stat().st_mode
    assert stat.S_IMODE(mode) == 0o644, oct(mode)


def test_the_evaluate_listing_lists_only_what_evaluate_reads(tmp_path: Path) -> None:
    """data/evaluate-inputs.json listed every file of a dataset's folders: a pair not matching its
    `pattern` and a method folder not among its `reference_methods` (files evaluate never reads)
    changed the listing, and evaluate reran for them. It lists the pairs matching `pattern` and
    the files of the methods compared; the other method folders by name only, where evaluate's
    note names them (the default methods), else not at all."""
    from PIL import Image

    mine = tmp_path / "mine"
    img = Image.new("RGB", (16, 16))
    for f in ("pairs/p1-A.png", "pairs/p1-B.png", "pairs/P2-truth.png", "pairs/q1-A.png", "pairs/q1-B.png",
              "pairs/notes.txt", "ref/Max/p1.png", "ref/Max/q1.png", "ref/Other/p1.png",
              "six/NSCT/p1.png", "six/NSCT/q1.png", "six/Mine/p1.png"):
        (mine / f).parent.mkdir(parents=True, exist_ok=True)
        img.save(mine / f, format="PNG")
    project = make_project(tmp_path / "p", {"evaluate": {"datasets": [
        {"name": "chosen", "sources": str(mine / "pairs"), "reference": str(mine / "ref"), "reference_methods": ["Max"],
         "pattern": "p*"},
        {"name": "default", "sources": str(mine / "pairs"), "reference": str(mine / "six"), "pattern": "p*"}]}},
        git=False)
    p = run(["snakemake", "evaluate", "-n", "--cores", "1"], project, check=False)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    chosen, default = json.loads((project / ".snakemake" / "evaluate-inputs.dry-run.json").read_text())["datasets"]
    assert set(chosen["sources"]["files"]) == {"p1-A.png", "p1-B.png"}, chosen  # P2: evaluate's pattern is case-sensitive
    assert set(chosen["reference"]["files"]) == {"Max/p1.png"}, chosen
    assert default["reference"]["files"] == {"Mine/": [], "NSCT/p1.png": default["reference"]["files"]["NSCT/p1.png"]}


def test_the_evaluate_listing_lists_every_file_evaluate_reads(tmp_path: Path) -> None:
    """The listing's `pattern` matched the names case-folded, said to be a superset of evaluate's
    case-sensitive fnmatchcase: it was not, and a change to a pair evaluate compares reran nothing:
    `[!a]*` takes A1 (evaluate) but not a1 (the listing), `?1` takes ß1 but not ss1. A method
    folder of `reference_methods` named with a dot (.D) or nested (sub/N), and a result that is a
    broken link (evaluate refuses it, naming it), were not listed either. Every file evaluate's own
    find_pairs and find_method_result take is listed; a pair outside the pattern is not, nor, with
    a reference_metrics CSV, the files of a folder outside the paper's six (evaluate reads the CSV's
    methods from the CSV: they were all listed)."""
    from PIL import Image

    from bafusion.evaluation import evaluate as ev
    from bafusion.evaluation.baselines import find_method_result

    mine = tmp_path / "mine"
    img = Image.new("RGB", (16, 16))
    for f in ("pairs/A1-A.png", "pairs/A1-B.png", "pairs/\u00df1-A.png", "pairs/\u00df1-B.png", "pairs/p1-A.png",
              "pairs/p1-B.png", "pairs/a2-A.png", "pairs/a2-B.png", "ref/M/A1.png", "ref/M/\u00df1.png", "ref/M/a2.png",
              "ref/.D/A1.png", "ref/sub/N/A1.png", "six/NSCT/A1.png", "six/NSCT/\u00df1.png", "six/NSCT/p1.png",
              "six/Peer/A1.png", "six/Mine/A1.png"):
        (mine / f).parent.mkdir(parents=True, exist_ok=True)
        img.save(mine / f, format="PNG")
    (mine / "ref" / "M" / "p1.png").symlink_to(mine / "gone.png")
    (mine / "peers.csv").write_text("pair,method,QMI\n" + "".join(f"{n},Peer,1.0\n" for n in ("A1", "\u00df1", "p1")))
    datasets = [
        {"name": "neg", "sources": str(mine / "pairs"), "reference": str(mine / "ref"),
         "reference_methods": ["M", ".D", "sub/N"], "pattern": "[!a]*"},
        {"name": "one", "sources": str(mine / "pairs"), "reference": str(mine / "ref"), "reference_methods": ["M"],
         "pattern": "?1"},
        {"name": "csv", "sources": str(mine / "pairs"), "reference": str(mine / "six"),
         "reference_metrics": str(mine / "peers.csv"), "pattern": "?1"}]
    project = make_project(tmp_path / "p", {"evaluate": {"datasets": datasets}}, git=False)
    p = run(["snakemake", "evaluate", "-n", "--cores", "1"], project, check=False)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    listing = json.loads((project / ".snakemake" / "evaluate-inputs.dry-run.json").read_text())["datasets"]
    cfg = ev.parse_config({"datasets": datasets})
    for ds, listed in zip(cfg.datasets, listing):
        pairs = ev.find_pairs(ds)
        assert {pr.name for pr in pairs} == {"A1", "\u00df1", "p1"}, ds.name
        read = {f.name for pr in pairs for f in (pr.a, pr.b)}
        assert read <= set(listed["sources"]["files"]), (ds.name, listed)
        assert ds.reference is not None
        peers = ev.read_peer_metrics(ds.reference_metrics).methods if ds.reference_metrics is not None else ()
        read = {f.relative_to(ds.reference).as_posix() for m in ds.reference_methods if m not in peers for pr in pairs
                if (f := find_method_result(ds.reference, m, pr.name)) is not None}  # as evaluate_pair reads them
        assert len(read) == {"neg": 5, "one": 3, "csv": 3}[ds.name], read  # M, NSCT: A1, ß1, p1 (M's a link); .D, sub/N: A1
        assert read <= set(listed["reference"]["files"]), (ds.name, read - set(listed["reference"]["files"]))
        assert not {n for n in [*listed["sources"]["files"], *listed["reference"]["files"]] if "a2" in n}, listed
    # Peer: the CSV's method, read from it (test_the_evaluate_listing_leaves_out_the_folders_of_the_reference_metrics_methods)
    assert set(listing[2]["reference"]["files"]) == {"Mine/", "NSCT/A1.png", "NSCT/\u00df1.png", "NSCT/p1.png"}


def test_a_test_set_dataset_with_a_pattern_is_listed_alike_before_and_after_the_test_set_is_made(tmp_path: Path) -> None:
    """A dataset whose `sources` is the test set (rule testset) and that sets a `pattern`: before
    the testset rule had run, data/testset/index.json was not there and the listing kept only the
    reference files matching `pattern`; after it, every file (evaluate takes the test set's names
    from its index.json, whatever the pattern). The listing changed once the test set was made,
    and evaluate ran once more than needed. The test set's folder is listed as one with an index."""
    from PIL import Image

    ref = tmp_path / "ref"
    img = Image.new("RGB", (16, 16))
    for f in ("NSCT/p1.png", "NSCT/q1.png"):
        (ref / f).parent.mkdir(parents=True, exist_ok=True)
        img.save(ref / f)
    project = make_project(tmp_path / "p", {"evaluate": {"datasets": [
        {"name": "t", "sources": "data/testset", "reference": str(ref), "pattern": "p*"}]}}, git=False)
    listings = []
    for made in (False, True):
        if made:  # as the testset rule leaves it
            (project / "data" / "testset").mkdir(parents=True)
            (project / "data" / "testset" / "index.json").write_text("[]\n")
        p = run(["snakemake", "evaluate", "-n", "--cores", "1"], project, check=False)
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
        listings.append((project / ".snakemake" / "evaluate-inputs.dry-run.json").read_text())
    assert listings[0] == listings[1], listings
    assert set(json.loads(listings[0])["datasets"][0]["reference"]["files"]) == {"NSCT/p1.png", "NSCT/q1.png"}


def test_the_evaluate_listing_leaves_out_the_folders_of_the_reference_metrics_methods(tmp_path: Path) -> None:
    """With a reference_metrics CSV, evaluate reads the CSV's methods from the CSV, never from a
    folder (one of the paper's six too), and its note on folders not compared does not name
    them: the listing still held their folders' files (and their names), so a change there reran
    evaluate for nothing. A method of the six that the CSV lacks is still read from its folder."""
    from PIL import Image

    mine = tmp_path / "mine"
    img = Image.new("RGB", (16, 16))
    for f in ("pairs/p1-A.png", "pairs/p1-B.png", "six/NSCT/p1.png", "six/DSIFT/p1.png", "six/Peer/p1.png"):
        (mine / f).parent.mkdir(parents=True, exist_ok=True)
        img.save(mine / f, format="PNG")
    (mine / "peers.csv").write_text("pair,method,QMI\np1,NSCT,1.0\np1,Peer,1.0\n")
    project = make_project(tmp_path / "p", {"evaluate": {"datasets": [
        {"name": "csv", "sources": str(mine / "pairs"), "reference": str(mine / "six"),
         "reference_metrics": str(mine / "peers.csv")}]}}, git=False)
    p = run(["snakemake", "evaluate", "-n", "--cores", "1"], project, check=False)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    (listed,) = json.loads((project / ".snakemake" / "evaluate-inputs.dry-run.json").read_text())["datasets"]
    assert set(listed["reference"]["files"]) == {"DSIFT/p1.png"}, listed


def test_a_reference_metrics_csv_a_rule_writes_leaves_the_listing_alike_before_and_after(tmp_path: Path) -> None:
    """A reference_metrics CSV that download_eval writes (inside data/download/eval) and a reference
    folder of one's own: before the rule had made the CSV, the listing held the files of the CSV's
    methods' folders; after it, not (evaluate reads those methods from the CSV). The listing changed
    once the CSV was made and evaluate ran once more than needed. Now a rule's CSV leaves out no
    folder, there yet or not."""
    from PIL import Image

    mine = tmp_path / "mine"
    img = Image.new("RGB", (16, 16))
    for f in ("pairs/p1-A.png", "pairs/p1-B.png", "six/NSCT/p1.png", "six/DSIFT/p1.png"):
        (mine / f).parent.mkdir(parents=True, exist_ok=True)
        img.save(mine / f, format="PNG")
    (mine / "eval").mkdir()  # download_eval's source: it makes data/download/eval
    project = make_project(tmp_path / "p", {"download": {"eval": {"from_dir": str(mine / "eval")}}, "evaluate": {"datasets": [
        {"name": "csv", "sources": str(mine / "pairs"), "reference": str(mine / "six"),
         "reference_metrics": "data/download/eval/peers.csv"}]}}, git=False)
    listings = []
    for made in (False, True):
        if made:  # as download_eval leaves it
            (project / "data" / "download" / "eval").mkdir(parents=True)
            (project / "data" / "download" / "eval" / "peers.csv").write_text("pair,method,QMI\np1,NSCT,1.0\n")
        p = run(["snakemake", "evaluate", "-n", "--cores", "1"], project, check=False)
        assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
        listings.append(json.loads((project / ".snakemake" / "evaluate-inputs.dry-run.json").read_text()))
    assert listings[0] == listings[1], listings
    assert set(listings[0]["datasets"][0]["reference"]["files"]) == {"NSCT/p1.png", "DSIFT/p1.png"}, listings[0]


def test_a_jobs_own_reading_of_the_workflow_leaves_the_evaluate_listing_alone(tmp_path: Path) -> None:
    """A cluster executor's job reads the workflow again (`--mode remote --target-jobs evaluate:`)
    and rebuilt the listing: it rescanned every file and, where a file had changed since the main
    process planned the job, rewrote data/evaluate-inputs.json. The main process's listing is the
    job's input as it is: a job's reading neither rewrites it nor writes a dry run's."""
    from PIL import Image

    mine = tmp_path / "mine"
    mine.mkdir()
    img = Image.new("RGB", (16, 16))
    for f in ("p1-A.png", "p1-B.png"):
        img.save(mine / f)
    project = _evaluated_project(tmp_path, {"name": "mine", "sources": str(mine)})
    listing = project / "data" / "evaluate-inputs.json"
    _evaluated(project)
    made = listing.read_text(), listing.stat().st_mtime_ns
    for f in ("p2-A.png", "p2-B.png"):  # after the main process planned the job
        img.save(mine / f)
    run(["snakemake", "--mode", "remote", "--target-jobs", "evaluate:", "--touch", "--cores", "1",
         "--allowed-rules", "evaluate"], project, check=False)
    assert (listing.read_text(), listing.stat().st_mtime_ns) == made
    assert not (project / ".snakemake" / "evaluate-inputs.dry-run.json").exists()
