"""The public API as ``help()`` and ``dir()`` show it in a notebook: signatures, namespaces and
the numpydoc sections of every public function and class."""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import bafusion
import bafusion.fusion


def test_fusion_functions_take_params_none_as_the_defaults_in_their_signatures() -> None:
    """help(fuse_images) and help(fuse_stack) printed the whole FusionParams(...) default
    (~900 characters) in the signature; the default is None (the defaults), as fuse's."""
    for fn in (bafusion.fuse_images, bafusion.fusion.fuse_stack, bafusion.fuse):
        default = inspect.signature(fn).parameters["params"].default
        assert default is None, (fn.__name__, repr(default)[:80])
        assert len(str(inspect.signature(fn))) < 400, fn.__name__


def test_dir_of_bafusion_fusion_shows_only_its_public_api() -> None:
    """dir(bafusion.fusion) listed Any, importlib, sys, types, _API and _Package beside the API,
    and bafusion.fusion.Any worked."""
    fusion = bafusion.fusion
    fusion.fuse_images  # noqa: B018 - loads bafusion.fusion.rule: a loaded submodule is not listed
    names = dir(fusion)
    assert set(fusion.__all__) <= set(names)
    extra = [n for n in names if n not in fusion.__all__ and not (n.startswith("__") and n.endswith("__"))]
    assert extra == [], extra
    for name in ("Any", "importlib", "sys", "types"):
        assert not hasattr(fusion, name), name
    from bafusion.fusion import decide  # a public name that is also a submodule stays the function

    assert callable(decide) and decide.__name__ == "decide"


def _type_checking_imports(module: object) -> dict[str, tuple[str, str]]:
    """What a lazy package's module-level ``if TYPE_CHECKING:`` block imports: public name ->
    (module, attribute), read from its source (the block never runs)."""
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    out: dict[str, tuple[str, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.level == 0, ast.unparse(imp)
                for alias in imp.names:
                    # ``import x as x``: a name a py.typed package's checkers count as re-exported
                    assert alias.asname == alias.name, ast.unparse(imp)
                    assert alias.name not in out, alias.name
                    out[alias.name] = (imp.module or "", alias.name)
    return out


@pytest.mark.parametrize("name", ["bafusion", "bafusion.fusion"])
def test_type_checkers_see_the_lazy_api_as_loaded(name: str) -> None:
    """The lazy ``__getattr__`` of bafusion and bafusion.fusion made every public name ``Any`` to
    users' type checkers (mypy, pyright: ``bafusion.fuse(1, 2, 3)`` passed). Each package imports
    its :data:`_API` under ``if TYPE_CHECKING:``, for checkers only; the block must name exactly
    ``__all__`` (but ``__version__``, a real import), each from where ``__getattr__`` loads it, so
    that the two cannot drift apart."""
    module = importlib.import_module(name)
    seen = _type_checking_imports(module)
    lazy = set(module.__all__) - {"__version__"}
    assert set(seen) == lazy, sorted(set(seen) ^ lazy)
    for public, (mod, attr) in module._API.items():
        expected = tuple(mod.rsplit(".", 1)) if attr is None else (mod, attr)  # a module: from its package
        assert seen[public] == expected, (public, seen[public], expected)


def _mypy(tmp_path: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m mypy`` with mypy's own defaults: a config file of ``[mypy]`` alone (else a
    ``mypy.ini``/``pyproject.toml`` found from ``cwd`` up, or the user's ``~/.mypy.ini`` or
    ``~/.config/mypy/config``, set the options: ``follow_imports = skip`` there made bafusion.fuse
    ``Any``, as if the TYPE_CHECKING block were gone), a cold cache of its own, and neither
    ``MYPYPATH`` nor ``PYTHONPATH``."""
    config = tmp_path / "mypy-defaults.ini"
    config.write_text("[mypy]\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("MYPYPATH", "PYTHONPATH")}
    return subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(config), "--cache-dir",
                           str(tmp_path / "cache"), "--no-color-output", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


#: A user's file as mypy checks it: revealed types (lines 5-8) and a wrong argument (line 9).
USER_FILE = """\
import bafusion
from bafusion.fusion import fuse_stack
from bafusion.metrics import qg

reveal_type(bafusion.fuse)
reveal_type(bafusion.metrics.qg)
reveal_type(fuse_stack)
reveal_type(qg)
bafusion.write_image("x.png", 3)
"""


def test_a_users_type_checker_sees_the_public_api(tmp_path: Path) -> None:
    """mypy on a user's file skipped bafusion ('module is installed, but missing library stubs or
    py.typed marker': no py.typed) and, with it, still saw the lazy names as Any. With both: the
    signatures, and a wrong argument is reported. Checks the installed package (the test extra
    installs bafusion and mypy); about 15 s of CPU with mypy's cache cold."""
    pytest.importorskip("mypy")
    (tmp_path / "user.py").write_text(USER_FILE, encoding="utf-8")
    r = _mypy(tmp_path, "--no-error-summary", "--hide-error-context", "user.py", cwd=tmp_path)
    out = r.stdout + r.stderr
    if "Cannot find implementation or library stub" in out:
        pytest.skip("bafusion is not installed where mypy looks (run from a checkout on PYTHONPATH?)")
    revealed = re.findall(r'^user\.py:(\d+): note: Revealed type is "(.*)"$', out, re.M)
    assert [int(line) for line, _ in revealed] == [5, 6, 7, 8], out
    assert all(t != "Any" for _, t in revealed), out
    assert "model: str | os.PathLike[str] | bafusion.fusion.models.FusionNets | None" in revealed[0][1], out
    assert revealed[1][1] == revealed[3][1] and revealed[1][1].endswith("-> float"), out
    assert revealed[2][1].endswith("-> list[bafusion.fusion.rule.FusionResult]"), out
    errors = [line for line in out.splitlines() if ": error: " in line]
    assert len(errors) == 1 and errors[0].startswith('user.py:9: error: Argument 2 to "write_image" has incompatible '
                                                     'type "int"'), out


#: Modules in which ``mypy --check-untyped-defs`` finds nothing (mypy 2.4.1, 2026-12-07): the
#: public API's packages and the ground floor's small modules. Elsewhere it reported 197 errors
#: in 48 files, 39 of them third-party libraries without stubs and none of the others read so
#: far a bug that runs (Optional values narrowed by a condition mypy cannot follow, ``**kwargs``
#: of ``dict[str, object]``, torch's overloads).
MYPY_CLEAN = ("__init__.py", "metrics.py", "cgroup.py", "checkout.py", "errors.py", "progress.py", "dvc_metrics.py",
              "fusion/__init__.py", "io/__init__.py", "io/convert.py", "io/formats.py", "io/info.py", "io/read.py")


def test_the_typed_modules_stay_clean_under_mypy(tmp_path: Path) -> None:
    """mypy on :data:`MYPY_CLEAN` (the modules they import are read, not reported): no error, so
    that a change that breaks their types is seen here, not by a user's type checker."""
    pytest.importorskip("mypy")
    from bafusion.checkout import source_checkout

    # the checkout's src/bafusion: an installed package's files lie in site-packages, where mypy
    # given them by path takes the folder for the sources' root and stops at a module there
    # ('site-packages/typing_extensions.py: error: This file shadows library module')
    repo = source_checkout()
    if repo is None:
        pytest.skip("bafusion runs from an installed package, not a source checkout: its modules are checked there")
    package = repo / "src" / "bafusion"
    r = _mypy(tmp_path, "--check-untyped-defs", "--follow-imports=silent", *(str(package / m) for m in MYPY_CLEAN),
              cwd=repo)
    assert r.returncode == 0 and "Success: no issues found" in r.stdout, (r.stdout + r.stderr)[-4000:]


# --------------------------------------------------------------------------------------------
# numpydoc sections of the public API (numpydoc itself is not a dependency: a small check)

#: The modules whose ``__all__`` is the public API the README calls documented.
DOCUMENTED_MODULES = ("bafusion", "bafusion.fusion", "bafusion.evaluation.metrics", "bafusion.io")


_SECTION = re.compile(r"^([A-Z][A-Za-z ]+)\n-{3,}[ \t]*$", re.M)


def _sections(doc: str | None) -> dict[str, str]:
    """The numpydoc sections of a docstring (dedented as help() shows it): title -> body."""
    text = inspect.cleandoc(doc or "")
    heads = list(_SECTION.finditer(text))
    return {m.group(1).strip(): text[m.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
            for i, m in enumerate(heads)}


def _listed(body: str) -> set[str]:
    """The names a Parameters/Attributes section lists: its unindented lines, ``name : type``,
    ``a, b : type`` or a bare ``name``."""
    names: set[str] = set()
    for line in body.splitlines():
        if not line.strip() or line[0].isspace():
            continue
        names |= {n.strip().lstrip("*") for n in line.split(" :")[0].split(",")}
    return names


def _commented_fields(cls: type) -> set[str]:
    """The fields of a dataclass documented by a ``#:`` comment right above them (as
    FusionParams' are: Sphinx reads them as the attributes' docs)."""
    lines = inspect.getsource(cls).splitlines()
    out = set()
    for i, line in enumerate(lines[1:], 1):
        m = re.match(r"\s+(\w+)\s*:", line)
        if m and lines[i - 1].strip().startswith("#:"):
            out.add(m.group(1))
    return out


def docstring_problems(obj: object) -> list[str]:
    """What the docstring of a public function or class lacks: a Parameters section listing
    every parameter of its signature (not ``*args``, ``**kwargs``, ``self``), and for a function
    whose return annotation is not None a Returns (or Yields) section. A dataclass's fields may
    instead be listed under Attributes or documented by ``#:`` comments."""
    try:
        sig = inspect.signature(obj)  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a builtin's signature (an Exception subclass): nothing to check
        return []
    params = [p.name for p in sig.parameters.values()
              if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name not in ("self", "cls")]
    sections = _sections(obj.__doc__)
    documented = _listed(sections.get("Parameters", ""))
    if dataclasses.is_dataclass(obj):
        documented |= _listed(sections.get("Attributes", "")) | _commented_fields(obj)  # type: ignore[arg-type]
    problems = []
    missing = [p for p in params if p not in documented]
    if missing:
        problems.append(f"parameters not documented: {', '.join(missing)}")
    if inspect.isfunction(obj) and sig.return_annotation not in (None, "None") \
            and not {"Returns", "Yields"} & set(sections):
        problems.append("no Returns section")
    return problems


def test_the_docstring_check_finds_a_missing_parameter_and_returns() -> None:
    def documented(a: int, b: int = 0, *args: int, **kw: int) -> int:
        """Sum.

        Parameters
        ----------
        a, b : int
            Numbers.

        Returns
        -------
        int
        """
        return a + b

    def lacking(a: int, c: int) -> int:
        """Sum.

        Parameters
        ----------
        a : int
            A number (c is only named in this line, which is indented).
        """
        return a + c

    def unindented(a: int) -> None:  # as qmi's was: lines at the left margin inside the text
        """Sum.

        The text,
continued at the margin.

        Parameters
        ----------
        a : int
        """

    assert docstring_problems(documented) == []
    assert docstring_problems(lacking) == ["parameters not documented: c", "no Returns section"]
    assert docstring_problems(unindented) == ["parameters not documented: a"]  # help() shows no section


def test_every_public_function_and_class_has_numpydoc_parameters_and_returns() -> None:
    """The README says the public API has numpydoc docstrings: bafusion.FusionNets' fields, 19 of
    bafusion.fusion.__all__'s functions, metrics' check_same_size, normalize1 and qmi (three
    unindented lines) and 39 of bafusion.io.__all__'s had no Parameters/Returns sections."""
    problems = []
    for module_name in DOCUMENTED_MODULES:
        module = importlib.import_module(module_name)
        for name in module.__all__:
            obj = getattr(module, name)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)):
                continue
            problems += [f"{module_name}.{name}: {p}" for p in docstring_problems(obj)]
    assert problems == [], "\n".join(problems)
