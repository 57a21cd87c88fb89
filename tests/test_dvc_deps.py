"""Every DVC stage lists, among its deps, each bafusion module its command runs: the evaluate
stage read every image through bafusion.io and listed none of src/bafusion/io/*, so an edit
there left `dvc repro` calling the evaluation up to date.

What a stage runs is found statically (no import): the stage's `snakemake <target>
--allowed-rules <rules>` command, each rule's `bafusion <command>` in workflow/rules/*.smk, the
function the command's module registers for it (`set_defaults(func=...)`), and from there, over
src/bafusion with ``ast``: the module-level code of every module imported (and of its parent
packages), and the functions and classes reached by name from the code reached, the imports
inside them included. A function-level import counts only where its function is reached
(`bafusion prepare` does not run the fusion code `cli.common.nets_from_args` imports). A folder
dep covers its files."""

from __future__ import annotations

import ast
import functools
import re
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"

Node = tuple[str, str | None]  # (module, None: its module-level code | a top-level name | "*": all of it)


def _file(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for f in (base / "__init__.py", base.with_suffix(".py")):
        if f.is_file():
            return f
    return None


class _Module:
    def __init__(self, name: str) -> None:
        path = _file(name)
        assert path is not None, name
        self.name, self.path = name, path
        self.package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        self.tree = ast.parse(path.read_text(), str(path))
        self.defs = {n.name: n for n in self.tree.body
                     if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
        self.imported: dict[str, Node] = {}  # a name bound by a module-level import -> what it is
        for stmt in self.tree.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                for local, node in self.bound(stmt):
                    self.imported[local] = node

    def absolute(self, stmt: ast.ImportFrom) -> str:
        if not stmt.level:
            return stmt.module or ""
        parts = self.package.split(".")
        parts = parts[: len(parts) - stmt.level + 1]
        return ".".join(parts + ([stmt.module] if stmt.module else []))

    def bound(self, stmt: ast.Import | ast.ImportFrom) -> list[tuple[str, Node]]:
        """The names an import binds in this module, each with the bafusion code it stands for."""
        out: list[tuple[str, Node]] = []
        if isinstance(stmt, ast.Import):
            for a in stmt.names:
                if a.name.split(".")[0] == "bafusion":
                    out.append(((a.asname or a.name).split(".")[0], (a.name, "*")))
            return out
        base = self.absolute(stmt)
        if base.split(".")[0] != "bafusion":
            return out
        for a in stmt.names:
            sub = f"{base}.{a.name}"
            out.append((a.asname or a.name, (sub, "*") if _file(sub) else (base, a.name)))
        return out


@functools.cache
def _module(name: str) -> _Module:
    return _Module(name)


def _code(nodes: list[ast.AST], skip_bodies: bool) -> list[ast.AST]:
    """The AST nodes of ``nodes``; with ``skip_bodies``, not those inside a function's body
    (module-level code: what runs on import)."""
    out: list[ast.AST] = []
    todo = list(nodes)
    while todo:
        n = todo.pop()
        out.append(n)
        if skip_bodies and isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            todo += [*getattr(n, "decorator_list", []), *ast.walk(n.args)]
            continue
        todo += list(ast.iter_child_nodes(n))
    return out


def _not_run_on_import(stmt: ast.stmt) -> bool:
    """``if TYPE_CHECKING:`` and ``if __name__ == "__main__":`` blocks."""
    return isinstance(stmt, ast.If) and ("TYPE_CHECKING" in ast.unparse(stmt.test) or "__main__" in ast.unparse(stmt.test))


def _edges(node: Node) -> set[Node]:
    module, name = node
    m = _module(module)
    parts = module.split(".")
    out: set[Node] = {(".".join(parts[:i]), None) for i in range(1, len(parts)) if _file(".".join(parts[:i]))}
    if name is None:
        body = [s for s in m.tree.body if not _not_run_on_import(s)]
        code = _code(body, skip_bodies=True)
    elif name == "*":
        return out | {(module, None)} | {(module, n) for n in m.defs}
    elif name in m.defs:
        out.add((module, None))
        code = _code([m.defs[name]], skip_bodies=False)
    elif name in m.imported:  # a name this module imports (a re-export: bafusion.io.read_image)
        return out | {(module, None), m.imported[name]}
    else:  # a module-level value
        return out | {(module, None)}
    for n in code:
        if isinstance(n, (ast.Import, ast.ImportFrom)):
            for _, target in m.bound(n):
                # an import in a function reached is there to be used; one at module level
                # runs the module's own code only (what it binds counts where it is used)
                out.add(target if name is not None else (target[0], None))
                out.add((target[0], None))
            if isinstance(n, ast.ImportFrom) and m.absolute(n).startswith("bafusion"):
                out.add((m.absolute(n), None))
        elif isinstance(n, ast.Name):
            if n.id in m.defs:
                out.add((module, n.id))
            elif n.id in m.imported:
                out.add(m.imported[n.id])
    return out


def _modules_reached(start: Node) -> set[str]:
    seen: set[Node] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        if node in seen or _file(node[0]) is None:
            continue
        seen.add(node)
        todo += _edges(node)
    return {module for module, _ in seen}


def _handler(command: str) -> Node:
    """The module and function that run ``bafusion <command>``: its ``set_defaults(func=...)``
    after its ``add_parser("<command>")``, in the module cli.app's COMMANDS names."""
    from bafusion.cli.app import COMMANDS

    module = COMMANDS[command]
    calls = sorted((n for n in ast.walk(_module(module).tree) if isinstance(n, ast.Call)
                    and isinstance(n.func, ast.Attribute) and n.func.attr in ("add_parser", "set_defaults")),
                   key=lambda n: (n.lineno, n.col_offset))
    current = None
    for call in calls:
        if call.func.attr == "add_parser":
            current = call.args[0].value if call.args and isinstance(call.args[0], ast.Constant) else None
        elif current == command:
            func = next(k.value for k in call.keywords if k.arg == "func")
            assert isinstance(func, ast.Name), ast.unparse(func)
            return module, func.id
    raise AssertionError(f"no set_defaults(func=...) for {command} in {module}")


def _rule_commands() -> dict[str, set[str]]:
    """Each Snakemake rule's ``bafusion <command>`` (workflow/rules/*.smk)."""
    return {rule: commands for rule, (commands, _) in _rules().items()}


def _rules() -> dict[str, tuple[set[str], str]]:
    """Each Snakemake rule's ``bafusion <command>`` and the rule file that defines it."""
    found: dict[str, tuple[set[str], str]] = {}
    for smk in sorted((REPO / "workflow" / "rules").glob("*.smk")):
        for block in re.split(r"^(?=rule \w+:)", smk.read_text(), flags=re.M):
            head = re.match(r"rule (\w+):", block)
            if head:
                found[head.group(1)] = (set(re.findall(r"\bbafusion ([a-z][a-z-]*)", block)),
                                        str(smk.relative_to(REPO)))
    return found


#: What every `snakemake <target>` reads before any rule: the Snakefile, which includes the rule
#: files: common.smk first, which rewrites config values (config.yaml12_floats,
#: retype_config_overrides, schema.validate_params) before any rule is planned and whose helpers
#: decide the values the rules pass (param() fills in the schema's defaults, train_config_json()
#: the keys `train --params-json` gets, coco_count() how many photos are downloaded), and
#: checks.smk last (refusals that need the rules).
SNAKEMAKE_FILES = ("Snakefile", "workflow/rules/common.smk", "workflow/rules/checks.smk")

#: Code the Snakefile calls that only refuses, warns, logs or words a message (it reads the
#: config and changes no value a rule passes), so its reach is not followed: a module here, or
#: "module.name" for one function of it.
SNAKEFILE_NOT_FOLLOWED: dict[str, str] = {
    "bafusion.cli.params_check": "parse-time refusals and warnings: they read the config, change no value",
    "bafusion.workspace.dvc_removed_outputs_note": "the note a refusal adds under dvc repro",
    "bafusion.errors": "exception classes",
    "bafusion.tracking": "MLflow logging of the invocation",
    "bafusion.evaluation.evaluate.REFERENCE_METHODS": "the paper's six method names, read for the listing of "
                                                      "evaluate's inputs (data/evaluate-inputs.json), which only "
                                                      "the evaluate rule takes",
    "bafusion.evaluation.evaluate.read_peer_metrics": "the methods of a reference_metrics CSV, read for the same "
                                                      "listing (their folders are not listed)",
}


def _snakemake_starts() -> set[Node]:
    """The bafusion code the Snakefile and common.smk call: each name a ``from bafusion...
    import`` (or ``import bafusion...``) line binds and the file uses (``tracking.enabled()``:
    the attribute used), less SNAKEFILE_NOT_FOLLOWED. Snakemake files are not Python, so the
    import lines are read one by one."""
    starts: set[Node] = set()
    for f in SNAKEMAKE_FILES:
        text = (REPO / f).read_text()
        for m in re.finditer(r"^[ \t]*(from\s+bafusion[\w.]*\s+import\s+(?:\([^)]*\)|[^\n]*)|import\s+bafusion[^\n]*)",
                             text, flags=re.M):
            rest = text[: m.start()] + text[m.end():]
            for local, (module, name) in _module("bafusion").bound(ast.parse(m.group(1).strip()).body[0]):
                if name == "*":
                    found = [(module, a) for a in sorted(set(re.findall(rf"\b{re.escape(local)}\.(\w+)", rest)))]
                else:
                    found = [(module, name)] if re.search(rf"\b{re.escape(local)}\b", rest) else []
                starts |= {n for n in found if n[0] not in SNAKEFILE_NOT_FOLLOWED
                           and f"{n[0]}.{n[1]}" not in SNAKEFILE_NOT_FOLLOWED}
    assert starts, f"no bafusion call found in {SNAKEMAKE_FILES}"
    return starts


def _stage_rules(cmd: str) -> list[str]:
    words = cmd.split()
    assert words[0] == "snakemake", cmd
    if "--allowed-rules" in words:
        rest = words[words.index("--allowed-rules") + 1:]
        return [w for w in rest[: next((i for i, w in enumerate(rest) if w.startswith("-")), len(rest))]]
    return [words[1]]


STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]

#: Modules every command runs that do not change what a stage writes, left out of its deps so
#: that rewording a message or a progress line does not make `dvc repro` train again (each with
#: why its edits leave the outputs' bytes as they are):
NOT_DEPS: dict[str, str] = {
    "src/bafusion/errors.py": ("exception classes (the wording of refusals) and is_out_of_memory, which decides "
                               "whether fuse-set skips a pair or fails: it only matters when memory runs out; "
                               "json_loads is json.loads that refuses a document nested too deeply as a "
                               "ValueError: the same values for any document it reads"),
    "src/bafusion/progress.py": "progress bars, and the time and command that start the lines of a step's log",
    "src/bafusion/tracking.py": "MLflow logging: the tracking store, not the stage's outs",
    "src/bafusion/checkout.py": ("whether the package runs from its source checkout, and the digest of its code: "
                                 "the runs' provenance tags, and for an installed package which folders hold the "
                                 "shipped nets; the pipeline runs from its checkout, where the answer is that "
                                 "repository whatever the module says"),
    "src/bafusion/atomic.py": "writes to a temporary name and renames: the same bytes",
    "src/bafusion/cli/app.py": "the command dispatcher: exit codes and error lines",
    "src/bafusion/_version.py": ("provenance only: recorded in the outputs (code_version, EXIF Software), which still "
                                 "name the version that made them; a bump alone re-runs nothing. Its hash_sources "
                                 "hashes the sources that are deps themselves (a checkpoint's or fuse-dir's record "
                                 "of the code)"),
    "Snakefile": ("glue: names params.yaml, includes the rule files and puts its checkout's src/ first on the "
                  "path, so that the code that runs is the one the stages' src/ deps name (it calls no bafusion "
                  "code: test_the_snakefile_calls_no_bafusion_code; the config is rewritten in common.smk, a dep)"),
    "workflow/rules/checks.smk": "parse-time refusals of cli/params_check.py that need the rules: they change no value",
    "src/bafusion/cli/params_check.py": "the Snakefile's parse-time refusals and warnings: they change no value",
    # package __init__ files: docstrings and re-exports of the modules that are deps
    **{f"src/bafusion/{p}__init__.py": "a package's docstring and re-exports"
       for p in ("", "cli/", "data/", "evaluation/", "fusion/", "io/", "nets/", "schemas/")},
}


def test_the_reachability_is_not_empty() -> None:
    """The analysis itself: prepare reaches the io package through data.prepare, and the fusion
    code only where a command fuses."""
    prepare = _modules_reached(_handler("prepare"))
    assert {"bafusion.data.prepare", "bafusion.io.read", "bafusion.io"} <= prepare, sorted(prepare)
    assert "bafusion.fusion.scoring" not in prepare, sorted(prepare)
    assert "bafusion.fusion.scoring" in _modules_reached(_handler("evaluate"))


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_depends_on_the_modules_its_command_runs(stage: str) -> None:
    rules = _rule_commands()
    commands = {c for r in _stage_rules(STAGES[stage]["cmd"]) for c in rules[r]}
    assert commands, stage
    # the rule files of its rules, and what the Snakefile runs for every target
    needed: set[str] = {_rules()[r][1] for r in _stage_rules(STAGES[stage]["cmd"])} | set(SNAKEMAKE_FILES)
    starts = [_handler(c) for c in sorted(commands)] + sorted(_snakemake_starts(), key=str)
    for start in starts:
        needed |= {str(_file(m).relative_to(REPO)) for m in _modules_reached(start)}
    if "src/bafusion/schema.py" in needed:  # the schema's defaults (x-default) and allowed values
        needed.add("src/bafusion/schemas/params.schema.yaml")
    deps = [d.rstrip("/") for d in STAGES[stage].get("deps", [])]
    missing = sorted(f for f in needed - NOT_DEPS.keys() if not any(f == d or f.startswith(d + "/") for d in deps))
    assert not missing, f"dvc.yaml stage {stage} ({', '.join(sorted(commands))}) lacks the deps {missing}"


def test_the_snakefile_calls_no_bafusion_code() -> None:
    """The Snakefile is left out of the deps (NOT_DEPS): it may only name the config file and
    include the rule files. Code that rewrites the config or decides a value belongs in
    common.smk, a dep of every stage (the Snakefile once called yaml12_floats and validate_params
    itself: deleting such a call changed the values the rules pass without `dvc repro` noticing)."""
    text = (REPO / "Snakefile").read_text()
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "bafusion" not in code and "config" not in code.replace('configfile: "params.yaml"', ""), code
    includes = re.findall(r'^include: "(workflow/rules/[\w.]+\.smk)"', text, flags=re.M)
    assert includes[0] == "workflow/rules/common.smk", includes
    assert sorted(includes) == sorted(str(p.relative_to(REPO)) for p in (REPO / "workflow" / "rules").glob("*.smk"))


def test_the_modules_left_out_of_the_deps_exist_and_are_not_listed() -> None:
    """NOT_DEPS names real files, and no stage lists one of them (a listed one would re-run the
    stage on a reworded message, which the list is there to avoid)."""
    assert all((REPO / f).is_file() for f in NOT_DEPS), [f for f in NOT_DEPS if not (REPO / f).is_file()]
    listed = {(stage, d) for stage, spec in STAGES.items() for d in spec.get("deps", []) if d in NOT_DEPS}
    assert not listed, sorted(listed)


@pytest.mark.slow
def test_the_download_stage_is_not_rerun_for_network_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The download stage listed the whole `download` section: a longer download.net.timeout or
    another download.cache made `dvc repro` run it again, although those decide how the files
    are fetched, not which (download_net in common.smk: no Snakemake rerun trigger either). It
    lists download.alphamatting and download.coco: a change there still reruns it."""
    from pipeline_project import make_project, run

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    project = make_project(tmp_path / "p", {"download": {"cache": str(tmp_path / "cache")}})
    run(["dvc", "repro", "download"], project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["download"]["net"] = {"retries": 1, "backoff": 0.5, "timeout": 7, "workers": 3}
    params["download"]["cache"] = str(tmp_path / "cache2")
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert run(["dvc", "status", "download"], project).stdout.strip() == "Data and pipelines are up to date."
    params["download"]["coco"]["count"] = 5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = run(["dvc", "status", "download"], project).stdout
    assert "modified:" in out and "download.coco" in out, out


# --- params: each stage lists the keys that can change its outputs ------------------------------

#: Keys of the train, fuse and evaluate sections that no stage lists, and why. Any other key
#: of these sections the schema knows is listed by its stages (a new key cannot be forgotten:
#: test_the_stages_list_every_key_of_their_sections).
UNLISTED = {
    "train.checkpoint_every": "a mid-epoch save reads the state, never changes it (nets/train.py, _not_restorable)",
    "fuse.save_maps": "not read by the pipeline: its fuse always writes data/fused/maps/",
    "fuse.threads": "the fused images are the same on any number of threads (README)",
    "evaluate.threads": "as fuse.threads",
    "evaluate.device": "optional, absent from params.yaml (DVC refuses a listed key the file lacks); absent, "
                       "evaluate runs on fuse.device, which is listed; a device can change the last bits, so "
                       "README says to run `dvc repro -f -s evaluate` after setting it",
}
#: stage -> (top-level keys, sections whose keys it lists, per-net override section)
LISTED = {
    "train_initial": (["seed", "patch", "depth"], ["train"], "train.initial"),
    "train_boundary": (["seed", "patch", "depth"], ["train"], "train.boundary"),
    "fuse": ([], ["fuse"], None),
    "evaluate": ([], ["evaluate", "fuse"], None),
}


def _covers(declared: str, key: str) -> bool:
    """Whether DVC sees a change of ``key`` through the declared param ``declared`` (the key
    itself, a section holding it, or a key inside it)."""
    return declared == key or key.startswith(declared + ".") or declared.startswith(key + ".")


@pytest.mark.parametrize("net,other", [("initial", "boundary"), ("boundary", "initial")])
def test_a_training_stage_does_not_list_the_other_nets_overrides(net: str, other: str) -> None:
    """Both training stages listed the whole `train` section, the per-net overrides included:
    `dvc exp run -S +train.boundary.lr=0.001` re-ran train_initial too, which in a --queue /
    --temp copy (no data/checkpoints/) trained the initial net again from scratch for a
    byte-identical initial.pt. Each lists its own train.<net> and none of train.<other>."""
    declared = STAGES[f"train_{net}"]["params"]
    assert f"train.{net}" in declared, declared
    assert not [d for d in declared if _covers(d, f"train.{other}")], declared


def test_the_stages_list_every_key_of_their_sections() -> None:
    """The train, fuse and evaluate stages list their sections key by key: every key the
    params schema knows there but those of UNLISTED, in the schema's order, each in the
    committed params.yaml (DVC refuses to run a stage whose listed key the file lacks)."""
    from bafusion.config import load_params
    from bafusion.schema import _has, leaf_keys

    keys = list(leaf_keys())
    assert set(UNLISTED) <= set(keys), sorted(set(UNLISTED) - set(keys))
    params = load_params(REPO / "params.yaml")
    for stage, (top, sections, own) in LISTED.items():
        want = top + [k for s in sections for k in keys if k.startswith(s + ".") and k not in UNLISTED]
        want += [own] if own else []
        got = STAGES[stage]["params"]
        assert got == want, (f"dvc.yaml stage {stage}: list {[k for k in want if k not in got]} (in this order: the "
                             f"schema's), or name a key in UNLISTED with the reason; not {[k for k in got if k not in want]}")
        assert [k for k in want if not _has(params, k)] == [], stage
    listed = {k for spec in STAGES.values() for k in spec.get("params", []) if isinstance(k, str)}
    assert not [k for k in UNLISTED if any(_covers(d, k) for d in listed)]


def test_the_fuse_and_evaluate_rules_compare_what_their_stages_list() -> None:
    """The fuse and evaluate rules leave out of their compared params (common.smk's UNCOMPARED)
    the keys their DVC stages leave out (UNLISTED), but evaluate.device, which Snakemake compares
    (DVC only cannot list an optional key): the rules passed their sections whole as compared
    params, and a change of fuse.threads reran fuse and evaluate under `snakemake`
    (test_pipeline_forcerun runs it)."""
    import ast
    import re

    found = re.search(r"^UNCOMPARED = (\{.*?^\})", (REPO / "workflow" / "rules" / "common.smk").read_text(), re.M | re.S)
    assert found, "common.smk: UNCOMPARED = {...} not found"
    uncompared = ast.literal_eval(found.group(1))
    for stage in ("fuse", "evaluate"):
        sections = LISTED[stage][1]
        want = {k for k in UNLISTED if k.split(".")[0] in sections and k != "evaluate.device"}
        got = {f"{section}.{key}" for section, keys in uncompared[stage].items() for key in keys}
        assert got == want, (stage, sorted(got ^ want))


@pytest.mark.slow
def test_dvc_reruns_only_the_stages_whose_listed_keys_changed(tmp_path: Path) -> None:
    """DVC's own reading of the stages' params (dvc.yaml's, the commands replaced by `echo`):
    after a change of one key, `dvc status` names the stages that `dvc exp run -S` re-runs
    first. A per-net override re-runs that net's training alone; a key of UNLISTED nothing."""
    import json
    import subprocess

    from pipeline_project import env

    stages = {name: {"cmd": "echo", "params": spec["params"]} for name, spec in STAGES.items() if spec.get("params")}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    base = (REPO / "params.yaml").read_text()
    (tmp_path / "params.yaml").write_text(base)

    def dvc(*args: str) -> str:
        return subprocess.run(["dvc", *args], cwd=tmp_path, env=env(), check=True, capture_output=True,
                               text=True).stdout

    dvc("init", "--no-scm", "-q")
    dvc("repro", "-q")
    cases = {
        "train.boundary.lr": (0.001, {"train_boundary"}),
        "train.initial.epochs": (2, {"train_initial"}),
        "train.lr": (0.02, {"train_initial", "train_boundary"}),
        "train.threads": (2, {"train_initial", "train_boundary"}),  # it changes the weights on the CPU
        "fuse.l": (4, {"fuse", "evaluate"}),
        "evaluate.alpha": (5, {"evaluate"}),
        "train.val_batch": (128, {"train_initial", "train_boundary"}),  # the validation loss's last digits can change
        **{k: (v, set()) for k, v in (("train.checkpoint_every", 7),
                                      ("fuse.save_maps", True), ("fuse.threads", 1), ("evaluate.threads", 1),
                                      ("evaluate.device", "cpu"))},  # README: rerun it by hand
    }
    for key, (value, want) in cases.items():
        want = want | {"check"}  # it lists the whole file: test_the_check_stage_refuses_any_invalid_key
        params = yaml.safe_load(base)
        *path, last = key.split(".")
        node = params
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        assert set(json.loads(dvc("status", "--json"))) == want, key


def test_the_check_stage_lists_the_whole_params_file_and_runs_first() -> None:
    """Keys no stage lists (download.net.*, download.cache, download.eval.*, fuse.threads, ...)
    were checked by no `dvc exp run`: `-S download.net.retries=-5` ran nothing and exited 0.
    The check stage lists the whole params.yaml and is the first stage (DVC plans the
    stages in dvc.yaml's order: it runs before any stage deletes its outputs)."""
    assert list(STAGES)[0] == "check", list(STAGES)
    check = STAGES["check"]
    assert check["params"] == [{"params.yaml": None}], check["params"]
    assert not check.get("outs"), "no outs: no stage waits for it, a change of a key reruns nothing else"
    words = check["cmd"].split()
    assert words[0] == "snakemake" and "--dry-run" in words, check["cmd"]


@pytest.mark.slow
def test_the_check_stage_refuses_any_invalid_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check stage's own command (a Snakemake dry run) under `dvc repro`: an invalid value of
    a key no other stage lists (download.net.retries) fails it, naming the key; and a file that
    lacks a key another stage lists (train.lr, set per net only) is refused there, before DVC
    reached train_initial, which it refused only after deleting data/models/initial.pt."""
    from pipeline_project import make_project, run

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    project = make_project(tmp_path / "p", git=False)
    run(["dvc", "init", "--no-scm", "-q"], project)
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"check": STAGES["check"]}}))
    run(["dvc", "repro", "check"], project)
    base = yaml.safe_load((project / "params.yaml").read_text())

    def repro(edit) -> str:
        params = yaml.safe_load(yaml.safe_dump(base))
        edit(params)
        (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        p = run(["dvc", "repro", "check"], project, check=False)
        assert p.returncode != 0, p.stdout + p.stderr
        return p.stdout + p.stderr

    out = repro(lambda p: p["download"]["net"].update(retries=-5))
    assert "download.net.retries: -5" in out, out

    def per_net_lr(p: dict) -> None:
        lr = p["train"].pop("lr")
        p["train"]["initial"]["lr"] = p["train"]["boundary"]["lr"] = lr

    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"check": STAGES["check"],
                                                                 "train_initial": {"cmd": "echo",
                                                                                   "params": ["train.lr"]}}}))
    out = repro(per_net_lr)
    assert "lacks keys that dvc.yaml's stages list: train.lr (stage train_initial)" in out, out


@pytest.mark.slow
def test_the_check_stage_prints_only_problems_and_leaves_no_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check stage's dry run printed Snakemake's whole job plan (its banner, "Job stats",
    "Reasons", "This was a dry-run") on every `dvc repro` / `dvc exp run`: Snakemake 9.x quiets
    nothing of a dry run for `--quiet all`; and it wrote .snakemake/iocache. The Snakefile ends
    the check stage's run once its checks have passed (checks.smk): `dvc repro check` prints
    DVC's own lines only, creates no .snakemake/, and a bad value still fails it, naming the key."""
    from pipeline_project import make_project, run

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    project = make_project(tmp_path / "p", git=False)
    run(["dvc", "init", "--no-scm", "-q"], project)
    (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"check": STAGES["check"]}}))
    p = run(["dvc", "repro", "check"], project)
    out = p.stdout + p.stderr
    assert "Running stage 'check'" in out, out
    for said in ("SNAKEMAKE", "Building DAG", "Job stats", "Reasons:", "This was a dry-run", "rule download"):
        assert said not in out, (said, out)
    assert not (project / ".snakemake").exists(), sorted(p.name for p in (project / ".snakemake").rglob("*"))
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["download"]["net"]["retries"] = -5
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    p = run(["dvc", "repro", "check"], project, check=False)
    assert p.returncode != 0 and "download.net.retries: -5" in p.stdout + p.stderr, p.stdout + p.stderr


def test_the_readme_forces_a_stage_alone() -> None:
    """README told `dvc repro -f evaluate` after setting evaluate.device: with a target and no
    `-s`, DVC forces every stage before it too (DVC 3.67: `dvc repro -f b` after `a` -> `b` ran
    `a` and `b`), so the trainings ran again for a device of evaluate. A forced re-run of one
    stage is `dvc repro -f -s <stage>`; the README says so wherever it names one, and the
    evaluate.device advice is there."""
    readme = (REPO / "README.md").read_text()
    forced = re.findall(r"dvc repro -f\s+(?!-)([a-z_]+)", readme)
    assert forced == [], forced
    words = " ".join(readme.split())
    assert "changing `evaluate.device` later re-runs no stage but `check`" in words
    assert "run `dvc repro -f -s evaluate` after it" in words


@pytest.mark.slow
def test_dvc_repro_of_check_and_a_stage_runs_check_first(tmp_path: Path) -> None:
    """`dvc repro <stage>` does not run the check stage (no stage depends on it): README tells
    `dvc repro check <stage>`, which runs check first, in either order of the two targets, and
    stops there when it fails (DVC's own planning, the commands replaced by shell tests)."""
    import subprocess

    from pipeline_project import env, ran_stages

    stages = {"check": {"cmd": "test ! -e bad"}, "a": {"cmd": "echo a > a.txt", "outs": ["a.txt"]},
              "b": {"cmd": "cat a.txt > b.txt", "deps": ["a.txt"], "outs": ["b.txt"]}}
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))

    def dvc(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["dvc", *args], cwd=tmp_path, env=env(), capture_output=True, text=True)

    assert dvc("init", "--no-scm", "-q").returncode == 0
    assert dvc("repro", "-q").returncode == 0
    (tmp_path / "bad").touch()
    for targets in (["check", "b"], ["b", "check"]):
        p = dvc("repro", "-f", *targets)
        assert p.returncode != 0 and ran_stages(p.stdout + p.stderr) == ["check"], (targets, p.stdout + p.stderr)
    assert "name both, `dvc repro check <stage>`, which runs `check` first" in " ".join((REPO / "README.md").read_text().split())


def test_only_the_check_stages_own_command_ends_at_the_checks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Snakefile ends the check stage's dry run once its checks pass (checks.smk), read from
    DVC_STAGE, which DVC sets to `check` in any stage of that name (`<dvc.yaml>:check` in another
    dvc.yaml), a user's own too: there `snakemake -n evaluate` printed nothing and exited 0, its
    job plan unshown. Only the stage's own command (a dry run of `download`) ends there."""
    import shlex
    import shutil

    from pipeline_project import make_project, run

    project = make_project(tmp_path / "p", git=False)
    for stage in ("check", "analysis/dvc.yaml:check"):
        monkeypatch.setenv("DVC_STAGE", stage)
        p = run(["snakemake", "-n", "evaluate", "--cores", "1"], project)
        assert "rule evaluate:" in p.stdout + p.stderr and "This was a dry-run" in p.stdout + p.stderr, (stage, p.stderr[-3000:])
    monkeypatch.setenv("DVC_STAGE", "check")
    shutil.rmtree(project / ".snakemake")  # made by the dry runs above
    p = run(shlex.split(STAGES["check"]["cmd"]), project)
    assert "rule download" not in p.stdout + p.stderr and "dry-run" not in p.stdout + p.stderr, p.stdout + p.stderr
    assert not (project / ".snakemake").exists()


@pytest.mark.slow
def test_a_key_newly_listed_in_dvc_yaml_needs_a_forced_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README said `dvc repro check <stage>` runs check first and stops there on a problem. DVC
    runs check only when its deps changed, and takes no dvc.yaml as a dep: after dvc.yaml alone
    made a stage list a key params.yaml lacks, `dvc repro check <stage>` skipped check, deleted
    the stage's outputs and then refused the key (DVC 3.67). `dvc repro -f -s check` refuses it
    first, naming it, the outputs kept; README says so."""
    from pipeline_project import make_project, ran_stages, run

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    project = make_project(tmp_path / "p", git=False)
    run(["dvc", "init", "--no-scm", "-q"], project)

    def stages(*keys: str) -> None:
        b = {"cmd": "echo b > b.txt", "params": ["fuse.l", *keys], "outs": ["b.txt"]}
        (project / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"check": STAGES["check"], "b": b}}))

    stages()
    run(["dvc", "repro", "-q"], project)
    stages("fuse.no_such_key")
    p = run(["dvc", "repro", "check", "b"], project, check=False)
    assert p.returncode != 0 and ran_stages(p.stdout + p.stderr) == [], p.stdout + p.stderr
    assert not (project / "b.txt").exists()  # DVC's order, which the README's advice is for
    stages()
    run(["dvc", "repro", "-q"], project)
    stages("fuse.no_such_key")
    p = run(["dvc", "repro", "-f", "-s", "check"], project, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "lacks keys that dvc.yaml's stages list: fuse.no_such_key (stage b)" in out, out
    assert (project / "b.txt").exists()
    words = " ".join((REPO / "README.md").read_text().split())
    assert "not after an edit of `dvc.yaml` alone (DVC refuses `dvc.yaml` as a dep): after making a stage list a key, run `dvc repro -f -s check` first" in words
