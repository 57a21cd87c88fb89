"""Property-based test (issue 16) of ``bafusion fuse`` and ``bafusion metrics`` on what a careless
user may feed them: sizes from 1x1 to 300x200, modes L, RGB, RGBA and I;16 (10, 12 or 16 bits,
with or without an sBIT chunk), identical and constant images. Never a traceback, never a NaN
written, the fused image has the sources' size. Derandomised (the same examples every run);
a tiny random ResNet-8 (patch 12) stands in for the trained nets."""

from __future__ import annotations

import contextlib
import io
import json
import math
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import make_tiny_nets  # noqa: E402
from PIL import Image

from bafusion.cli import main as cli_main
from bafusion.evaluation.metrics import METRICS
from bafusion.io import png_depth

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

MODES = ["L", "RGB", "RGBA", "I;16"]
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_nets(tmp_path_factory.mktemp("nets"))


def _add_sbit(path: Path, bits: int) -> None:
    data = path.read_bytes()
    i = 8 + 8 + 13 + 4  # after the signature and IHDR
    chunk = b"sBIT" + bytes([bits])
    path.write_bytes(data[:i] + struct.pack(">I", 1) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[i:])


@st.composite
def pairs(draw: st.DrawFn) -> dict:
    return {
        "h": draw(st.integers(1, 200)),
        "w": draw(st.integers(1, 300)),
        "modes": (draw(st.sampled_from(MODES)), draw(st.sampled_from(MODES))),
        "bits": draw(st.sampled_from([10, 12, 16])),
        "sbit": draw(st.booleans()),
        "kind": draw(st.sampled_from(["random", "identical", "constant", "one constant"])),
        "seed": draw(st.integers(0, 2**16)),
    }


def _write_pair(d: Path, case: dict) -> tuple[Path, Path]:
    rng = np.random.default_rng(case["seed"])
    h, w, bits = case["h"], case["w"], case["bits"]
    hi = (1 << bits) - 1
    base = rng.integers(0, hi + 1, (h, w, 3)).astype(np.float64) / hi
    other = rng.integers(0, hi + 1, (h, w, 3)).astype(np.float64) / hi
    if case["kind"] in ("identical", "constant"):
        other = base
    if case["kind"] == "constant":
        base = other = np.full((h, w, 3), rng.uniform())
    if case["kind"] == "one constant":
        other = np.full((h, w, 3), rng.uniform())
    paths = []
    for name, mode, x in (("a", case["modes"][0], base), ("b", case["modes"][1], other)):
        p = d / f"{name}.png"
        if mode == "I;16":
            Image.fromarray(np.round(x[..., 0] * hi).astype(np.uint16)).save(p)
            if case["sbit"] and bits < 16:
                _add_sbit(p, bits)
        else:
            rgb = Image.fromarray(np.round(x * 255).astype(np.uint8))
            rgb.convert(mode).save(p)
        paths.append(p)
    return paths[0], paths[1]


def _run(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = cli_main(argv)
    return rc, out.getvalue(), err.getvalue()


def _no_nan(token: str) -> float:
    raise AssertionError(f"{token} written")


@SETTINGS
@given(case=pairs())
def test_fuse_and_metrics_never_crash_nor_write_nan(nets: Path, case: dict) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        pa, pb = _write_pair(d, case)
        out = d / "f.png"
        # --force: unrelated random sources are the point here, not the one-scene check
        rc, _, err = _run(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(nets), "--device", "cpu", "--force"])
        assert rc == 0, err
        assert "Traceback" not in err
        f = np.asarray(Image.open(out))
        assert f.shape[:2] == (case["h"], case["w"])
        # sources of more than 8 bits give a 16-bit PNG, else 8-bit
        assert png_depth(out)[0] == (16 if "I;16" in case["modes"] else 8)

        rc, stdout, err = _run(["metrics", str(pa), str(pb), str(out), "--format", "json"])
        assert "Traceback" not in err and "nan" not in stdout.lower()
        if rc == 2:  # an explicit, one-line refusal: only for images too small for a metric, or an
            # unmarked 16-bit source beside an 8-bit one (its bit depth cannot be told)
            unmarked = "I;16" in case["modes"] and not (case["sbit"] and case["bits"] < 16)
            mixed = unmarked and any(m != "I;16" for m in case["modes"])
            assert min(case["h"], case["w"]) < 11 or (mixed and "without marked significant bits" in err), err
            assert len(err.strip().splitlines()) == 1 and err.startswith("bafusion metrics: error: "), err
            return
        assert rc == 0, err
        values = json.loads(stdout, parse_constant=_no_nan)
        assert list(values) == list(METRICS)
        warned = [line for line in err.strip().splitlines() if line]
        undefined = [k for k, v in values.items() if v is None]
        assert len(warned) == len(undefined)
        for k, line in zip(undefined, warned):
            assert line.startswith(f"bafusion metrics: warning: {k} is undefined for these images ("), line
        assert all(math.isfinite(v) for v in values.values() if v is not None)
