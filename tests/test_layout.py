"""The package layout by stage (issue 17): data flows one way, data -> nets -> fusion ->
evaluation, with the ground floor (io, config, schema, tracking, errors, ...) under all of
them and the command line (cli) on top; no module imports another in a cycle.

The imports are read with ``ast`` from the sources, function-level imports included (a lazy
import is still a dependency); imports under ``if TYPE_CHECKING:`` are annotations only and
are left out.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "bafusion"

#: What each layer may import (besides itself). The ground floor is every top-level module and
#: package not named in LAYERS (bafusion.io and its modules).
LAYERS = ("ground", "data", "nets", "fusion", "evaluation", "cli")
ALLOWED = {
    "ground": {"ground"},
    "data": {"ground", "data"},
    "nets": {"ground", "data", "nets"},
    "fusion": {"ground", "data", "nets", "fusion"},
    "evaluation": {"ground", "data", "nets", "fusion", "evaluation"},
    "cli": set(LAYERS),
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(name: str) -> str:
    parts = name.split(".")
    if name in ("bafusion", "bafusion.metrics"):
        # the package's own __init__: the public API, may import any layer; bafusion.metrics
        # is the API's name for bafusion.evaluation.metrics (``import bafusion.metrics``)
        return "api"
    if name == "bafusion.__main__":
        return "cli"  # ``python -m bafusion``: the command
    if len(parts) >= 3 or (len(parts) == 2 and parts[1] in LAYERS):
        return parts[1] if parts[1] in LAYERS else "ground"
    return "ground"


def _type_checking_lines(tree: ast.Module) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for sub in node.body:
                lines.update(range(sub.lineno, (sub.end_lineno or sub.lineno) + 1))
    return lines


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The bafusion modules ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    tree = ast.parse(path.read_text())
    skip = _type_checking_lines(tree)
    out: set[str] = set()
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == "bafusion"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "bafusion":
                continue
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in known else mod)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports_of(n, p, set(mods)) for n, p in mods.items()}


def test_the_stages_are_subpackages_with_a_stated_rule() -> None:
    for stage in ("data", "nets", "fusion", "evaluation", "cli"):
        init = PACKAGE / stage / "__init__.py"
        assert init.is_file(), stage
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "import" in doc.lower(), f"{init}: the docstring must say what the subpackage may import"


def test_data_flows_one_way() -> None:
    bad = []
    for name, deps in graph().items():
        here = layer(name)
        if here == "api":
            continue
        for d in deps:
            if layer(d) not in ALLOWED[here]:
                bad.append(f"{name} ({here}) imports {d} ({layer(d)})")
    assert not bad, "\n".join(sorted(bad))


def _cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles() -> None:
    assert _cycles(graph()) == []


def test_the_cycle_check_finds_a_cycle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_the_layer_check_sees_a_lazy_import(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    from bafusion.evaluation import metrics\n    return metrics\n")
    assert imports_of("bafusion.fusion.m", f, {"bafusion.evaluation.metrics"}) == {"bafusion.evaluation.metrics"}


@pytest.mark.parametrize("name", sorted(n for n in modules() if not n.endswith("__main__")))
def test_every_module_imports(name: str) -> None:
    importlib.import_module(name)


def test_a_public_name_that_is_also_a_submodule_stays_the_function() -> None:
    """``bafusion.fusion.decide`` is the function, even after the submodule was imported."""
    import subprocess
    import sys

    code = (
        "import bafusion.fusion.rule\n"  # imports the submodule bafusion.fusion.decide
        "import importlib, types\n"
        "from bafusion.fusion import decide\n"
        "import bafusion.fusion as f\n"
        "assert callable(decide) and not isinstance(decide, types.ModuleType), decide\n"
        "assert f.decide is decide\n"
        "m = importlib.import_module('bafusion.fusion.decide')\n"
        "assert isinstance(m, types.ModuleType) and m.decide is decide\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def _defined_names(path: Path) -> list[str]:
    """The names a module's top level defines (functions, classes, assignments)."""
    out: list[str] = []
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            out.append(node.name)
        elif isinstance(node, ast.Assign):
            for t in node.targets:
                out += [e.id for e in (t.elts if isinstance(t, ast.Tuple) else [t]) if isinstance(e, ast.Name)]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            out.append(node.target.id)
    return out


def test_the_io_package_states_its_public_api() -> None:
    """bafusion.io is a package of one concern per module (it was one module of 2,210 lines);
    its own namespace is the public API, so that no caller names a module: every public name
    of its modules is in ``bafusion.io.__all__`` as the same object, defined in one module
    only, no module's name is also a public name, and the docstring names every module."""
    import bafusion.io as io

    subs = sorted(p.stem for p in (PACKAGE / "io").glob("*.py") if p.stem != "__init__")
    assert subs, "bafusion/io is a package"
    where: dict[str, list[str]] = {}
    for sub in subs:
        mod = importlib.import_module(f"bafusion.io.{sub}")
        assert f":mod:`.{sub}`" in (io.__doc__ or ""), f"bafusion.io's docstring does not name its module {sub}"
        for name in _defined_names(PACKAGE / "io" / f"{sub}.py"):
            where.setdefault(name, []).append(sub)
            if not name.startswith("_"):
                assert name in io.__all__, f"bafusion.io.{sub}.{name} is public but not in bafusion.io.__all__"
                assert getattr(io, name) is getattr(mod, name), name
    assert {n: w for n, w in where.items() if len(w) > 1} == {}
    assert sorted(io.__all__) == sorted(n for n in where if not n.startswith("_"))
    assert not set(subs) & set(io.__all__)
