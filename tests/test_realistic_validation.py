"""benchmarks/realistic_validation.py's command line (the benchmark itself is measured by hand:
BENCHMARKS.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "realistic_validation.py"


def _script():
    spec = importlib.util.spec_from_file_location("realistic_validation", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_help_names_every_degradation_kind(capsys: pytest.CaptureFixture) -> None:
    """--help said "comma-separated kinds (default: the six above; also: residual)", the six being
    in the module's docstring, which --help does not show: the kinds --kinds takes were not named.
    It names them now, from KINDS and OPTIONAL_KINDS, and says how to give one with a space."""
    rv = _script()
    with pytest.raises(SystemExit) as e:
        rv.main(["--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the help
    assert "the six above" not in text, text
    for kind in [*rv.KINDS, *rv.OPTIONAL_KINDS]:
        assert kind in text, (kind, text)
    assert "--kinds 'paper,strong blur'" in text, text


def test_an_unknown_kind_is_refused_before_the_models_load(capsys: pytest.CaptureFixture) -> None:
    """An unknown kind was refused only after every model had been loaded (a missing model
    folder hid it); it is refused first, naming the kinds known."""
    rv = _script()
    with pytest.raises(SystemExit) as e:
        rv.main(["--kinds", "paper,blur", "--model", "/nonexistent/model"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unknown kind(s) ['blur']" in err and "'strong blur'" in err and "'residual'" in err, err
