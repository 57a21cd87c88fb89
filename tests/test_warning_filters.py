"""The library's quiet blocks (:func:`bafusion.threads.quiet_warnings`) beside other threads: a
service or notebook that loads a model in one thread while another reads an image must keep its
warning filters as they were, and another thread's warnings during a model load must be shown.
With :class:`warnings.catch_warnings` (which puts back the whole filter list it found), a model
load's ``simplefilter("ignore")`` overlapping an image read stayed for the rest of the process:
``fuse()`` and ``load_model()`` from a 4-thread pool left ``('ignore', None, Warning, None, 0)``
in ``warnings.filters``, and no warning was shown after."""

from __future__ import annotations

import threading
import warnings
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _load_paused(monkeypatch: pytest.MonkeyPatch, nets: Path):
    """A thread loading ``nets`` (:func:`bafusion.load_model`), paused inside its first
    ``torch.load``: returns the thread, the event set once it is there, and the event that lets
    it go on."""
    import torch

    import bafusion
    from bafusion.nets import model as model_module

    inside, go = threading.Event(), threading.Event()
    real = torch.load

    def paused(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - torch.load's signature
        if threading.current_thread().name == "loader" and not inside.is_set():
            inside.set()
            assert go.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(model_module.torch, "load", paused)
    errors: list[BaseException] = []

    def load() -> None:
        try:
            bafusion.load_model(nets, device="cpu")
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    thread = threading.Thread(target=load, name="loader")
    thread.start()
    assert inside.wait(30)
    return thread, go, errors


def test_a_model_load_beside_an_image_read_leaves_the_filters_as_they_were(
        tiny_nets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The read's quiet block starts while the load's runs and ends after it: each removes its
    own filters (catch_warnings put back, at the read's end, the list it found: the load's
    "ignore" everything with it)."""
    import bafusion
    from bafusion.io.formats import _quiet_pillow

    bafusion.load_model(tiny_nets, device="cpu")  # the modules it imports add their filters once
    before = list(warnings.filters)
    thread, go, errors = _load_paused(monkeypatch, tiny_nets)
    reading = _quiet_pillow()  # an image read in this thread, as read_image opens every file
    reading.__enter__()
    try:
        go.set()
        thread.join(30)
    finally:
        reading.__exit__(None, None, None)
    assert not errors and not thread.is_alive()
    assert warnings.filters == before


def test_another_threads_warning_during_a_model_load_is_shown(tiny_nets: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """The load ignores torch's warnings (and those raised at its own torch.load line), not a
    fusion note another thread raises meanwhile (it ignored every warning of the process)."""
    from bafusion.fusion.rule import FusionNoteWarning

    thread, go, errors = _load_paused(monkeypatch, tiny_nets)
    try:
        with warnings.catch_warnings(record=True) as seen:  # the filters as they are, the load's first
            warnings.warn("B is darker than A", FusionNoteWarning)
    finally:
        go.set()
        thread.join(30)
    assert not errors
    assert [str(w.message) for w in seen] == ["B is darker than A"]


def test_quiet_warnings_removes_only_its_own_filters() -> None:
    """Blocks that overlap without nesting leave the list as it was, a user's equal filter
    included; inside, the warnings named are ignored and the others shown."""
    from bafusion.threads import quiet_warnings

    warnings.filterwarnings("ignore", category=DeprecationWarning)  # the user's own, equal to a block's
    before = list(warnings.filters)
    first = quiet_warnings({"category": DeprecationWarning})
    second = quiet_warnings({"message": "noisy", "category": UserWarning})
    first.__enter__()
    second.__enter__()
    with warnings.catch_warnings(record=True) as seen:
        warnings.filters[:] = [f for f in warnings.filters if f[0] == "ignore"]  # the blocks' and the user's
        warnings.warn("noisy thing", UserWarning)
        warnings.warn("NOISY too (case-insensitive)", UserWarning)
        warnings.warn("other", UserWarning)
    first.__exit__(None, None, None)
    second.__exit__(None, None, None)
    assert [str(w.message) for w in seen] == ["other"]
    assert warnings.filters == before


def _module_pattern(f: tuple) -> str | None:
    """The module of a filter of :data:`warnings.filters` (a pattern or, Python's own, a str)."""
    return getattr(f[3], "pattern", f[3])


def test_a_quiet_block_overlapping_another_threads_catch_warnings_leaves_nothing_ignored() -> None:
    """Another thread's ``catch_warnings`` block, entered during a quiet block and left after it,
    puts back the list it copied, with the quiet block's filter in it (removing cannot reach a
    list put back later): that filter stayed and ignored Pillow's UserWarnings for the rest of
    the process. It now ignores nothing once its block has ended (and goes at the next block);
    during its block it ignores only its own thread's warnings."""
    from bafusion.threads import quiet_warnings

    inside, copied, left = threading.Event(), threading.Event(), threading.Event()
    shown_there: list[str] = []

    def quiet() -> None:
        with quiet_warnings({"category": UserWarning, "module": r"PIL\."}):
            inside.set()
            assert copied.wait(30)
        left.set()

    def other() -> None:
        assert inside.wait(30)
        with warnings.catch_warnings(record=True) as seen:  # copies the list, the quiet filter in it
            warnings.simplefilter("always")
            mine = next(f for f in warnings.filters if _module_pattern(f) == r"PIL\.")
            warnings.filters.remove(mine)
            warnings.filters.insert(0, mine)  # the quiet block's filter first again
            warnings.warn_explicit("Corrupt EXIF data", UserWarning, "TiffImagePlugin.py", 1, module="PIL.X")
            copied.set()
            assert left.wait(30)
        shown_there.extend(str(w.message) for w in seen)

    with warnings.catch_warnings():  # this test's own list, put back after
        threads = [threading.Thread(target=quiet), threading.Thread(target=other)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert shown_there == ["Corrupt EXIF data"]  # not the quiet block's thread: shown
        with warnings.catch_warnings(record=True) as seen:
            warnings.filters[:] = [f for f in warnings.filters if f[0] == "ignore"]  # whatever is left
            warnings.warn_explicit("Corrupt EXIF data", UserWarning, "TiffImagePlugin.py", 1, module="PIL.X")
        assert [str(w.message) for w in seen] == ["Corrupt EXIF data"]
        with quiet_warnings({"message": "unrelated"}):
            pass
        assert not any(_module_pattern(f) == r"PIL\." for f in warnings.filters)  # dropped
