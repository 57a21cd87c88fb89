"""The public API as ``help()`` and ``dir()`` show it in a notebook: signatures, namespaces and
the numpydoc sections of every public function and class."""

from __future__ import annotations

import inspect

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
