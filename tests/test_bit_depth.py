"""Sources of more than 8 bits per sample (issue 16): the bit depth comes from the file (PNG
sBIT, OME-TIFF SignificantBits), else one depth common to the pair; 8-bit files read exactly
as before."""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image, ImageFilter

import bafusion.io
from bafusion.cli import main as cli_main
from bafusion.errors import InputFileError
from bafusion.io import common_bits, png_depth, read_image, read_images
from bafusion.nets.model import build_model, save_model


def write_png(path: Path, a: np.ndarray, sbit: int | None = None) -> Path:
    """A PNG written chunk by chunk (Pillow cannot write 16-bit colour): gray (H, W) or RGB
    (H, W, 3), uint8 or uint16, with an optional sBIT chunk."""
    depth = 16 if a.dtype == np.uint16 else 8
    ctype = 2 if a.ndim == 3 else 0
    h, w = a.shape[:2]

    def chunk(typ: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + typ + data + struct.pack(">I", zlib.crc32(typ + data))

    rows = a.astype(">u2" if depth == 16 else "u1").reshape(h, -1).view(np.uint8).reshape(h, -1)
    raw = b"".join(b"\x00" + r.tobytes() for r in rows)
    body = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0))
    if sbit is not None:
        body += chunk(b"sBIT", bytes([sbit] * (3 if ctype == 2 else 1)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
    return path


def to12(a8: np.ndarray) -> np.ndarray:
    """8-bit data as 12-bit samples that scale back to exactly ``a8``."""
    return np.round(a8.astype(np.float64) * 4095 / 255).astype(np.uint16)


@pytest.fixture
def gray8() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (20, 30), dtype=np.uint8)


def test_our_png_writer_reads_back_in_pillow(tmp_path: Path, gray8) -> None:
    p = write_png(tmp_path / "g.png", to12(gray8), sbit=12)
    assert png_depth(p) == (16, 0, 12)
    assert np.array_equal(np.asarray(Image.open(p)), to12(gray8))


@pytest.mark.parametrize("sbit", [None, 12])
def test_12_bit_data_in_a_16_bit_png_reads_like_the_same_data_in_8_bits(tmp_path: Path, gray8, sbit) -> None:
    p = write_png(tmp_path / "a.png", to12(gray8), sbit=sbit)
    assert np.array_equal(read_image(p), gray8)
    assert np.array_equal(read_images([p, p])[1], gray8)


def test_sbit_with_data_scaled_to_16_bits_is_scaled_from_16(tmp_path: Path, gray8) -> None:
    """The PNG specification stores sBIT data scaled up to the full depth: then it is."""
    full = (gray8.astype(np.uint16) * 257).astype(np.uint16)
    assert np.array_equal(read_image(write_png(tmp_path / "a.png", full, sbit=12)), gray8)


def test_an_unmarked_pair_is_scaled_alike(tmp_path: Path) -> None:
    """A's maximum 300 and B's 200 were scaled per image (A from 16 bits, B from 8); now both
    from the 10 bits that hold the pair's maximum, so B stays darker than A."""
    a = write_png(tmp_path / "a.png", np.full((4, 5), 300, np.uint16))
    b = write_png(tmp_path / "b.png", np.full((4, 5), 200, np.uint16))
    ra, rb = read_images([a, b])
    assert (ra.max(), rb.max()) == (round(300 / 1023 * 255), round(200 / 1023 * 255))
    assert common_bits(255) == 8 and common_bits(256) == 10 and common_bits(4080) == 12 and common_bits(65535) == 16


def test_16_bit_colour_tiff_is_read_at_full_precision(tmp_path: Path) -> None:
    rgb8 = np.random.default_rng(4).integers(0, 256, (12, 10, 3), dtype=np.uint8)
    p = tmp_path / "c.tif"
    tifffile.imwrite(p, to12(rgb8), photometric="rgb")
    assert np.array_equal(read_image(p), rgb8)


def test_ome_tiff_significant_bits(tmp_path: Path, gray8) -> None:
    p = tmp_path / "g.tif"
    tifffile.imwrite(p, to12(gray8), description='<OME><Pixels SignificantBits="12"/></OME>')
    assert np.array_equal(read_image(p), gray8)


def test_16_bit_colour_png_with_unscaled_sbit_data_is_read_at_full_precision(tmp_path: Path) -> None:
    """Pillow decodes only the high byte of 16-bit colour PNGs (these were refused); pypng reads them whole."""
    rgb8 = np.random.default_rng(5).integers(0, 256, (8, 9, 3), dtype=np.uint8)
    p = write_png(tmp_path / "c.png", to12(rgb8), sbit=12)
    assert np.array_equal(read_image(p), rgb8)


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "1"])
def test_8_bit_files_read_exactly_as_before(tmp_path: Path, mode: str) -> None:
    rgb = np.random.default_rng(6).integers(0, 256, (14, 11, 3), dtype=np.uint8)
    im = Image.fromarray(rgb).convert(mode)
    for suffix in (".png", ".jpg", ".tif", ".bmp"):
        if suffix == ".jpg" and mode in ("RGBA", "P", "LA", "1"):
            continue
        if suffix == ".bmp" and mode == "LA":
            continue
        p = tmp_path / f"x{suffix}"
        im.save(p)
        assert np.array_equal(read_image(p), bafusion.io._read_8bit(p)), suffix
        assert np.array_equal(read_images([p, p])[0], bafusion.io._read_8bit(p)), suffix


def test_fuse_and_metrics_of_a_12_bit_pair_equal_those_of_the_8_bit_pair(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(7)
    a8 = rng.integers(0, 256, (26, 22), dtype=np.uint8)
    b8 = np.asarray(Image.fromarray(a8).filter(ImageFilter.GaussianBlur(2)))
    torch.manual_seed(0)
    for kind in ("initial", "boundary"):
        save_model(build_model(8), tmp_path / "nets" / f"{kind}.pt", {"patch": 12})
    Image.fromarray(a8).save(tmp_path / "a8.png")
    Image.fromarray(b8).save(tmp_path / "b8.png")
    write_png(tmp_path / "a12.png", to12(a8))
    write_png(tmp_path / "b12.png", to12(b8))
    for bits in ("8", "12"):
        assert cli_main(["fuse", str(tmp_path / f"a{bits}.png"), str(tmp_path / f"b{bits}.png"), "-o",
                         str(tmp_path / f"f{bits}.png"), "--model", str(tmp_path / "nets"), "--device", "cpu"]) == 0
    f8, f12 = (np.asarray(Image.open(tmp_path / f"f{bits}.png")) for bits in ("8", "12"))
    # 12-bit sources give a 16-bit fusion (the sources on the 16-bit scale) with the 8-bit decision
    assert png_depth(tmp_path / "f12.png")[0] == 16 and f12.max() > 255
    a16, b16 = (np.round(to12(x) / 4095 * 65535) for x in (a8, b8))
    assert np.all((f12 == a16) | (f12 == b16)), "every fused pixel is A's or B's full-depth pixel"
    assert np.array_equal(np.round(f12 / 65535 * 255).astype(np.uint8), f8)
    assert np.all((f8 == a8) | (f8 == b8)), "every fused pixel is A's or B's 8-bit pixel, not a darkened one"
    capsys.readouterr()
    out = []
    assert cli_main(["metrics", str(tmp_path / "a8.png"), str(tmp_path / "b8.png"), str(tmp_path / "f8.png"),
                     "--metrics", "QMI,QG"]) == 0
    out.append(capsys.readouterr().out)
    # fuse's own 8-bit output (.bmp, .jpg) of the unmarked 12-bit pair: A and B read by the rule
    # fuse read them by (one depth common to the two), so it scores as the 8-bit triple (it was
    # refused as "16-bit without marked significant bits ... beside 8-bit")
    for suffix in (".bmp", ".jpg"):
        assert cli_main(["fuse", str(tmp_path / "a12.png"), str(tmp_path / "b12.png"), "-o",
                         str(tmp_path / f"f12{suffix}"), "--model", str(tmp_path / "nets"), "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "f12.bmp")), f8)
    capsys.readouterr()
    for f in ("f12.bmp", "f8.png"):
        assert cli_main(["metrics", str(tmp_path / "a12.png"), str(tmp_path / "b12.png"), str(tmp_path / f),
                         "--metrics", "QMI,QG"]) == 0
        assert capsys.readouterr().out == out[0]
    assert cli_main(["metrics", str(tmp_path / "a12.png"), str(tmp_path / "b12.png"), str(tmp_path / "f12.jpg"),
                     "--metrics", "QMI,QG"]) == 0
    capsys.readouterr()
    # the uint8 fusion of the uint16 arrays (keep_depth=False) is measured beside them as fuse read them
    from bafusion import fuse
    from bafusion.evaluation import metrics as M

    a12, b12 = to12(a8), to12(b8)
    f12_8 = fuse(a12, b12, model=tmp_path / "nets", device="cpu", keep_depth=False)
    assert f12_8.dtype == np.uint8 and np.array_equal(f12_8, f8)
    assert M.compute_all(a12, b12, f12_8) == M.compute_all(a8, b8, f8)
    # the 16-bit fusion marks sBIT 12: with its 12-bit sources it scores as the 8-bit triple
    assert png_depth(tmp_path / "f12.png") == (16, 0, 12)
    assert cli_main(["metrics", str(tmp_path / "a12.png"), str(tmp_path / "b12.png"), str(tmp_path / "f12.png"),
                     "--metrics", "QMI,QG"]) == 0
    out.append(capsys.readouterr().out)
    assert out[0] == out[1]
    assert np.array_equal(read_image(tmp_path / "a8.png"), a8)


def test_32_bit_float_gray_files_on_their_own_scale(tmp_path: Path) -> None:
    """Float images are usually on [0, 1]: such a file was read as nearly black (taken on
    [0, 255]); now the scale follows the values (1, 255 or 65535)."""
    g8 = np.random.default_rng(8).integers(0, 256, (9, 13), dtype=np.uint8)
    for scale in (1.0, 255.0, 65535.0):
        p = tmp_path / f"f{int(scale)}.tif"
        Image.fromarray((g8 / 255.0 * scale).astype(np.float32), mode="F").save(p)
        got = read_image(p)
        assert got.dtype == np.uint8 and np.abs(got.astype(int) - g8).max() <= 1, scale
    bad = (g8 / 255.0).astype(np.float32)
    bad[2, 3] = np.nan
    p = tmp_path / "nan.tif"
    Image.fromarray(bad, mode="F").save(p)
    with pytest.raises(InputFileError, match=r"nan\.tif.*NaN or infinite"):
        read_image(p)


def _float_pair(tmp_path: Path, a: np.ndarray, b: np.ndarray) -> tuple[Path, Path]:
    pa, pb = tmp_path / "fa.tif", tmp_path / "fb.tif"
    tifffile.imwrite(pa, a.astype(np.float32))
    tifffile.imwrite(pb, b.astype(np.float32))
    return pa, pb


def _u8(x: np.ndarray) -> np.ndarray:
    """float data on [0, 1] as stored in float32 and read: clipped, to uint8."""
    return np.round(np.clip(x.astype(np.float32).astype(np.float64), 0, 1) * 255).astype(np.uint8)


def _pair01() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.indices((30, 40))
    a = ((x * 7 + y * 3) % 101) / 100.0  # [0, 1]
    return a, np.ascontiguousarray(a[:, ::-1])


def test_float_sources_are_scaled_alike_and_overshoot_is_clipped_with_a_note(tmp_path: Path) -> None:
    """A float shot on [0, 1] with one pixel at 1.001 (overshoot after float processing) was
    read on [0, 255] (nearly black) beside its partner on [0, 1]: each file had its own scale.
    The float sources read together now share one scale, from their largest value (1 below 16,
    255 below 4096, else 65535); samples outside it are clipped, with a note naming the file,
    the fraction clipped and the values."""
    a, b = _pair01()
    a[0, 0] = 1.001
    pa, pb = _float_pair(tmp_path, a, b)
    want_a, want_b = _u8(a), _u8(b)
    ra, rb = read_images([pa, pb])
    assert np.array_equal(ra, want_a) and np.array_equal(rb, want_b)
    src = bafusion.io.read_source_set([pa, pb])
    assert [n for n in src.notes if "clipped" in n] == [
        f"{pa}: 1 of 1200 samples (0.0833 %) lie outside [0, 1], the scale its floating-point samples are read on "
        "(values 0 to 1.001): clipped to it"]
    # a pair that goes below 0 and over 1 (-0.1 .. 1.2): on [0, 1], both clipped, both named
    pa, pb = _float_pair(tmp_path, a * 1.3 - 0.1, b * 1.3 - 0.1)
    ra, rb = read_images([pa, pb])
    for r, x in ((ra, a * 1.3 - 0.1), (rb, b * 1.3 - 0.1)):
        assert np.array_equal(r, _u8(x))
    notes = [n for n in bafusion.io.read_source_set([pa, pb], metadata=False).notes if "clipped" in n]
    assert len(notes) == 2 and str(pa) in notes[0] and str(pb) in notes[1]
    assert all("lie outside [0, 1]" in n and "(values -0.1 to 1.2" in n for n in notes), notes
    # one scale for the set: a [0, 255] file beside a [0, 1] one is not stretched to match it
    pa, pb = _float_pair(tmp_path, a * 255, b)
    ra, rb = read_images([pa, pb])
    assert np.abs(ra.astype(int) - want_a).max() <= 1 and rb.max() <= 1


def test_fuse_of_a_float_pair_with_overshoot_fuses_and_says_so(tmp_path: Path, capsys) -> None:
    """``fuse fa.tif fb.tif`` was refused as "not the same scene (correlation 0.00)" when A had
    one pixel at 1.001; ``metrics`` read the pair as differently. Both now read the pair alike
    and say on stderr what was clipped."""
    a, b = _pair01()
    a[0, 0] = 1.001
    pa, pb = _float_pair(tmp_path, a, b)
    f = tmp_path / "f.png"
    assert cli_main(["fuse", str(pa), str(pb), "-o", str(f), "--model", str(_tiny_nets(tmp_path)), "--device", "cpu",
                     "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert f"{pa}: 1 of 1200 samples" in err and "clipped" in err
    ra, rb, rf = read_images([pa, pb, f])
    assert np.all((rf == ra) | (rf == rb))
    assert cli_main(["metrics", str(pa), str(pb), str(f), "--metrics", "QG"]) == 0
    assert f"bafusion metrics: {pa}: 1 of 1200 samples" in capsys.readouterr().err


def _tiny_nets(d: Path) -> Path:
    torch.manual_seed(0)
    for kind in ("initial", "boundary"):
        save_model(build_model(8), d / "nets" / f"{kind}.pt", {"patch": 12})
    return d / "nets"


@pytest.mark.parametrize("sbit", [10, 12, 14, 15])
@pytest.mark.parametrize("top", [0.02, 0.2, 0.7, 1.0])
def test_dark_sbit_data_scaled_to_16_bits_is_scaled_from_16(tmp_path: Path, sbit: int, top: float) -> None:
    """sBIT data stored as the PNG specification asks (scaled up to 16 bits: by a left shift,
    bit replication or linear scaling) is read from 16 bits also when it is dark, all its
    values below 2**sbit (they were taken for unscaled data: 4x too bright at sBIT 14)."""
    s = 16 - sbit
    v = np.round(np.random.default_rng(sbit).random((20, 30)) * top * ((1 << sbit) - 1)).astype(np.int64)
    for name, x in (("shift", v << s), ("replicate", (v << s) | (v >> max(sbit - s, 0))),
                    ("linear", np.round(v * 65535 / ((1 << sbit) - 1)))):
        x = x.astype(np.uint16)
        got = read_images([write_png(tmp_path / f"{name}.png", x, sbit=sbit)])[0]
        assert np.array_equal(got, np.round(x / 65535 * 255).astype(np.uint8)), name


@pytest.mark.parametrize("sbit", [10, 12, 14, 15])
@pytest.mark.parametrize("top", [0.001, 0.02, 0.1, 0.3, 1.0])
def test_our_16_bit_png_reads_back_as_written_at_every_brightness(tmp_path: Path, sbit: int, top: float) -> None:
    """``write_image(bits=...)`` and the reader agree: what a 16-bit PNG holds is what is read
    (on the 16-bit scale), dark or bright, also for samples off the sBIT grid (the writer
    brings them onto it: the file claims ``bits`` significant bits)."""
    rng = np.random.default_rng(sbit)
    for kind in ("grid", "any"):
        x = np.round(rng.random((20, 30, 3)) * top * 65535).astype(np.uint16)
        if kind == "grid":
            x = np.round(np.round(x / 65535 * ((1 << sbit) - 1)) * 65535 / ((1 << sbit) - 1)).astype(np.uint16)
        p = tmp_path / f"{kind}.png"
        bafusion.io.write_image(p, x, bits=sbit)
        held = bafusion.io._read_png16(p)
        if kind == "grid":
            assert np.array_equal(held, x), "samples already on the grid are written as they are"
        assert np.abs(held - x).max() <= 65535 / ((1 << sbit) - 1) / 2 + 0.5
        src = bafusion.io.read_source_set([p], metadata=False)
        assert src.full is not None and np.array_equal(src.full[0], held), (kind, held.max())
        assert np.array_equal(src.images[0], np.round(held / 65535 * 255).astype(np.uint8)), kind


@pytest.mark.parametrize(("sbit", "scaled"), [(14, True), (12, True), (12, False)])
def test_a_dark_fusion_of_sbit_sources_scores_like_its_sources(tmp_path: Path, sbit: int, scaled: bool) -> None:
    """The 16-bit fusion of dark sBIT sources was read back 4x (sBIT 14) or 16x (sBIT 12) too
    bright beside its sources by ``bafusion metrics``: every fused pixel is one source's pixel,
    so A, B and F read together must agree pixel for pixel."""
    y, x = np.indices((30, 40))
    a = (x * 3 + y) % 170  # dark: at most 169
    b = np.ascontiguousarray(a[:, ::-1])
    for name, v in (("a", a), ("b", b)):
        if scaled:  # the specification's way, as bafusion writes: 8-bit-ish data x 16 on the 16-bit scale
            bafusion.io.write_image(tmp_path / f"{name}.png", (v * 16).astype(np.uint16), bits=sbit)
        else:  # unscaled sBIT data (issue 16): values 0..2**sbit - 1, not on the 16-bit grid; so dark
            # that the fusion (on the 16-bit scale) still fits in sbit bits
            write_png(tmp_path / f"{name}.png", (v + 1).astype(np.uint16), sbit=sbit)
    f = tmp_path / "f.png"
    assert cli_main(["fuse", "--force", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(f),
                     "--model", str(_tiny_nets(tmp_path)), "--device", "cpu", "--no-progress"]) == 0
    assert png_depth(f) == (16, 0, sbit)
    ra, rb, rf = read_images([tmp_path / "a.png", tmp_path / "b.png", f])
    assert np.all((rf == ra) | (rf == rb)), (ra.max(), rb.max(), rf.max())
    assert rf.max() == max(ra.max(), rb.max())


@pytest.mark.parametrize("bits", [8, 10, 12, 14, 15])
@pytest.mark.parametrize("top", [0.001, 0.02, 0.3, 1.0])
def test_our_16_bit_tiff_reads_back_as_written_at_every_brightness(tmp_path: Path, bits: int, top: float) -> None:
    """``write_image(bits=...)`` to a .tif wrote the image on the full 16-bit scale with no
    mark, so beside its unmarked ``bits``-bit sources it was scaled from 16 bits (12-bit
    sources came out 1/16 as bright as their fusion). Now the TIFF holds the ``bits``-bit
    values (as its sources did) and marks them (OME-TIFF ``SignificantBits``), and reads back
    as written on the 16-bit scale, alone or beside such sources, dark or bright."""
    rng = np.random.default_rng(bits)
    top_value = (1 << bits) - 1
    for shape in ((20, 30), (20, 30, 3)):
        x = np.round(rng.random(shape) * top * 65535).astype(np.uint16)
        v = np.round(x / 65535 * top_value)  # the bits-bit data behind x
        grid = np.round(v * 65535 / top_value).astype(np.uint16)
        p = tmp_path / f"f{len(shape)}.tif"
        bafusion.io.write_image(p, x, bits=bits)
        with tifffile.TiffFile(p) as tf:
            assert np.array_equal(tf.asarray(), v) and f'SignificantBits="{bits}"' in tf.pages.first.description
        src = bafusion.io.read_source_set([p], metadata=False)
        assert src.full is not None and np.array_equal(src.full[0], grid), (shape, x.max())
        assert np.array_equal(src.images[0], np.round(grid / 65535 * 255).astype(np.uint8))
        # beside an unmarked source of the same data, when that is read as bits-bit data (as the
        # sources of a fusion written with these bits are: common_bits of their largest value)
        tifffile.imwrite(tmp_path / "s.tif", v.astype(np.uint16), photometric="rgb" if len(shape) == 3 else None)
        if common_bits(v.max()) == bits:
            s, f = read_images([tmp_path / "s.tif", p])
            assert np.array_equal(s, f)
    for i in (1, 2):
        bafusion.io.write_image(tmp_path / f"{i}.tif", x, bits=bits)
    assert (tmp_path / "1.tif").read_bytes() == (tmp_path / "2.tif").read_bytes(), "deterministic"
    bafusion.io.write_image(p, x)  # no bits: the full 16-bit scale, unmarked, as before
    with tifffile.TiffFile(p) as tf:
        assert np.array_equal(tf.asarray(), x) and "SignificantBits" not in str(tf.pages.first.description)


@pytest.mark.parametrize("case", ["12-bit", "16-bit within 8 bits"])
def test_a_16_bit_tiff_fusion_compares_like_its_sources(tmp_path: Path, case: str) -> None:
    """``fuse a12.tif b12.tif -o f12.tif`` (12-bit data in 16-bit TIFFs): ``metrics`` read A and
    B at 1/16 of F's brightness (QG 0.007 instead of 0.76); 16-bit sources of values within 8
    bits came out x257 beside F. Every fused pixel is one source's pixel, so A, B and F read
    together must agree pixel for pixel, for ``fuse`` and ``fuse-dir --ext tif`` alike."""
    y, x = np.indices((30, 40))
    scale = 4095 if case == "12-bit" else 5
    a = np.round(((x * 7 + y * 3) % 101) / 100 * scale).astype(np.uint16)
    b = np.ascontiguousarray(a[:, ::-1])
    src = tmp_path / "in"
    src.mkdir()
    for name, v in (("s-A", a), ("s-B", b)):
        tifffile.imwrite(src / f"{name}.tif", np.dstack([v, v[::-1], v]), photometric="rgb")
    nets = _tiny_nets(tmp_path)
    common = ["--model", str(nets), "--device", "cpu", "--no-progress", "--force"]
    f = tmp_path / "f.tif"
    assert cli_main(["fuse", str(src / "s-A.tif"), str(src / "s-B.tif"), "-o", str(f), *common]) == 0
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out"), "--ext", "tif", "--quiet", *common]) == 0
    for fused in (f, tmp_path / "out" / "s.tif"):
        ra, rb, rf = read_images([src / "s-A.tif", src / "s-B.tif", fused])
        assert np.all((rf == ra) | (rf == rb)), (fused.name, ra.max(), rb.max(), rf.max())
        assert rf.max() == max(ra.max(), rb.max())


def test_fuse_with_map_keeps_16_bit_sources(tmp_path: Path) -> None:
    """``fuse_with_map`` cast its result to uint8: uint16 sources wrapped (65535 -> 255,
    4096 -> 0). Now uint16 sources give a uint16 fusion of their own values; uint8 ones give
    the same uint8 fusion as before; a uint8 source beside a uint16 one is taken x 257 (the
    docstring's 16-bit scale)."""
    from bafusion.fusion import fuse_with_map

    rng = np.random.default_rng(11)
    dm = rng.random((7, 9)) > 0.5
    for shape in ((7, 9), (7, 9, 3)):
        a = rng.integers(0, 65536, shape, dtype=np.uint16)
        b = rng.integers(0, 65536, shape, dtype=np.uint16)
        sel = dm if a.ndim == 2 else dm[..., None]
        f = fuse_with_map(a, b, dm)
        assert f.dtype == np.uint16 and np.array_equal(f, np.where(sel, a, b))
        a8, b8 = (x >> 8 for x in (a, b))
        f8 = fuse_with_map(a8.astype(np.uint8), b8.astype(np.uint8), dm)
        assert f8.dtype == np.uint8 and np.array_equal(f8, np.where(sel, a8, b8))
    # gray beside colour (replicated) and alpha (dropped), as the docstring says, at 16 bits too
    f = fuse_with_map(a[..., 0], np.dstack([b, b[..., :1]]), dm)
    assert f.dtype == np.uint16 and np.array_equal(f, np.where(dm[..., None], a[..., [0, 0, 0]], b))
    f = fuse_with_map(a, b8.astype(np.uint8), dm)
    assert f.dtype == np.uint16 and np.array_equal(f, np.where(dm[..., None], a, b8 * 257))


def _fuse_to(tmp_path: Path, a: Path, b: Path, out: Path) -> None:
    assert cli_main(["fuse", "--force", str(a), str(b), "-o", str(out), "--model", str(tmp_path / "nets"),
                     "--device", "cpu", "--no-progress"]) == 0


@pytest.mark.parametrize("top", [1.0, 0.05])
def test_a_tiff_fusion_of_sbit_sources_on_the_16_bit_scale_stays_on_it(tmp_path: Path, capsys, top: float) -> None:
    """sBIT-12 PNGs hold their samples scaled up to 16 bits (the PNG specification); their
    .tif fusion held the 12-bit values (0..4095, OME SignificantBits 12): 1/16 as bright in a
    viewer that ignores OME metadata. It now holds the 16-bit values, as its sources and its .png
    twin do (marked SignificantBits 16, so that it reads back on that scale also when dark), and
    reads back, alone and with its sources (``bafusion metrics``), as before and as the .png."""
    _tiny_nets(tmp_path)
    y, x = np.indices((30, 40))
    v = np.round(((x * 7 + y * 3) % 101) / 100 * top * 4095)  # 12-bit data
    for name, w in (("a", v), ("b", v[:, ::-1])):
        bafusion.io.write_image(tmp_path / f"{name}.png", np.round(w * 65535 / 4095).astype(np.uint16), bits=12)
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    for suffix in (".tif", ".png"):
        _fuse_to(tmp_path, a, b, tmp_path / f"f{suffix}")
    png_values = bafusion.io._read_png16(tmp_path / "f.png")
    with tifffile.TiffFile(tmp_path / "f.tif") as tf:
        held, desc = tf.asarray(), tf.pages.first.description
    assert np.array_equal(held, png_values) and 'SignificantBits="16"' in desc
    assert held.max() > 4095 or top < 1
    # the values read back: those of the .png, and of the 12-bit TIFF it was before
    bafusion.io.write_image(tmp_path / "old.tif", png_values.astype(np.uint16), bits=12)
    for f in ("f.png", "old.tif"):
        assert np.array_equal(read_image(tmp_path / "f.tif"), read_image(tmp_path / f)), f
        assert np.array_equal(read_images([a, b, tmp_path / "f.tif"])[2], read_images([a, b, tmp_path / f])[2]), f
        full = [bafusion.io.read_source_set([tmp_path / n], metadata=False).full[0] for n in ("f.tif", f)]
        assert np.array_equal(*full), f
    capsys.readouterr()
    out = []
    for f in ("f.tif", "f.png", "old.tif"):
        assert cli_main(["metrics", str(a), str(b), str(tmp_path / f), "--metrics", "QMI,QG"]) == 0
        out.append(capsys.readouterr().out)
    assert out[0] == out[1]
    # camera-style sources of 12-bit values (unmarked 16-bit TIFFs): a fusion of 12-bit values, as before
    for name, w in (("a", v), ("b", v[:, ::-1])):
        tifffile.imwrite(tmp_path / f"c{name}.tif", w.astype(np.uint16))
    _fuse_to(tmp_path, tmp_path / "ca.tif", tmp_path / "cb.tif", tmp_path / "cf.tif")
    with tifffile.TiffFile(tmp_path / "cf.tif") as tf:
        bits = common_bits(v.max())
        assert tf.asarray().max() <= v.max() and f'SignificantBits="{bits}"' in tf.pages.first.description


def test_a_fusion_of_sources_whose_significant_bits_do_not_hold_keeps_their_levels(tmp_path: Path) -> None:
    """OME-TIFFs marked SignificantBits 12 whose values exceed 12 bits are read on the 16-bit
    scale, but their fusion was written with 12 bits (to .tif: 12-bit values, 16 levels of the
    sources' merged into one; to .png: sBIT 12). It keeps every level now."""
    _tiny_nets(tmp_path)
    y, x = np.indices((30, 40))
    v = ((x * 1601 + y * 977) % 65536).astype(np.uint16)  # 16-bit values, many levels
    for name, w in (("a", v), ("b", np.ascontiguousarray(v[:, ::-1]))):
        tifffile.imwrite(tmp_path / f"{name}.tif", w, description='<OME><Pixels SignificantBits="12"/></OME>')
    a, b = tmp_path / "a.tif", tmp_path / "b.tif"
    src = bafusion.io.read_source_set([a, b], metadata=False)
    assert src.bits == 16 and np.array_equal(src.full[0], v)
    for suffix in (".tif", ".png"):
        f = tmp_path / f"f{suffix}"
        _fuse_to(tmp_path, a, b, f)
        got = bafusion.io.read_source_set([f], metadata=False).full[0]
        assert np.all((got == v) | (got == v[:, ::-1])), suffix
        assert len(np.unique(got)) == len(np.unique(np.where(got == v, v, v[:, ::-1]))), suffix
    with tifffile.TiffFile(tmp_path / "f.tif") as tf:
        assert np.array_equal(tf.asarray(), got)
    assert png_depth(tmp_path / "f.png")[2] == 16  # no sBIT 12 claim on 16-bit data: marked 16, as the .tif


def test_a_16_bit_gray_alpha_png_is_gray_like_an_8_bit_one(tmp_path: Path, capsys) -> None:
    """A 16-bit gray + alpha PNG (colour type 4, as pypng or tifffile users write it): Pillow
    opens it as mode RGBA, so ``image_info`` called it colour (``evaluate`` then said a gray
    source was mixed with colour ones) while the reader read it as gray. Now it is gray like an
    8-bit LA PNG, in ``image_info`` and through ``fuse`` (alpha dropped: a 16-bit gray result)."""
    import png

    from bafusion.io import image_info, mix_note

    rng = np.random.default_rng(5)
    a8 = rng.integers(0, 256, (26, 22), dtype=np.uint8)
    b8 = np.asarray(Image.fromarray(a8).filter(ImageFilter.GaussianBlur(2)))
    alpha = np.full(a8.shape, 65535, dtype=np.uint16)
    for name, x in (("a", a8), ("b", b8)):
        Image.fromarray(np.dstack([x, alpha.astype(np.uint8)]), mode="LA").save(tmp_path / f"{name}8.png")
        with open(tmp_path / f"{name}16.png", "wb") as fh:
            png.Writer(22, 26, greyscale=True, alpha=True, bitdepth=16).write_array(
                fh, np.dstack([x.astype(np.uint16) * 257, alpha]).reshape(-1))
    assert png_depth(tmp_path / "a16.png")[:2] == (16, 4)
    infos = [image_info(tmp_path / n) for n in ("a8.png", "a16.png")]
    assert [i.gray for i in infos] == [True, True]
    assert mix_note([i.path for i in infos], [i.gray for i in infos]) is None
    assert np.array_equal(read_image(tmp_path / "a16.png"), a8)
    torch.manual_seed(0)
    for kind in ("initial", "boundary"):
        save_model(build_model(8), tmp_path / "nets" / f"{kind}.pt", {"patch": 12})
    for bits in ("8", "16"):
        assert cli_main(["fuse", str(tmp_path / f"a{bits}.png"), str(tmp_path / f"b{bits}.png"), "-o",
                         str(tmp_path / f"f{bits}.png"), "--model", str(tmp_path / "nets"), "--device", "cpu",
                         "--no-progress"]) == 0
    assert png_depth(tmp_path / "f8.png")[:2] == (8, 0) and png_depth(tmp_path / "f16.png")[:2] == (16, 0)
    f8, f16 = (np.asarray(Image.open(tmp_path / f"f{bits}.png")) for bits in ("8", "16"))
    assert np.array_equal(f16, f8.astype(np.uint16) * 257)
    assert image_info(tmp_path / "f16.png").gray



def _moved_16_bit_pair(tmp_path: Path) -> tuple[np.ndarray, np.ndarray, Path, Path]:
    """A 16-bit RGB pair of one textured scene, B moved by (7, 5) px, with detail below 8 bits."""
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:300, 0:300]
    base = np.sin(xx / 7.0) * np.cos(yy / 11.0) * 0.4 + 0.5 + 0.1 * np.sin((xx + yy) / 23.0)
    scene = np.clip(np.stack([base, base**1.3, 1 - base], -1), 0, 1) * 65000
    scene = (scene + rng.integers(0, 256, scene.shape)).astype(np.uint16)
    a, b = scene[10:270, 10:270], scene[15:275, 17:277]
    return a, b, write_png(tmp_path / "a.png", a), write_png(tmp_path / "b.png", b)


def test_aligned_16_bit_pair_is_fused_at_16_bits(tmp_path: Path, capsys) -> None:
    """``fuse --align`` of 16-bit shots fused and wrote them in 8 bits (a note said so) while the
    same shots unaligned kept 16; so did ``bafusion.fuse(align=...)`` (with a warning). The
    full-depth shots now get the same registration and crop as their 8-bit copies, and each
    pixel of the fusion is one of them."""
    import warnings

    from bafusion import fuse
    from bafusion.fusion.align import align_images
    from bafusion.io import read_source_set, scale_to_u8

    a, b, pa, pb = _moved_16_bit_pair(tmp_path)
    nets = _tiny_nets(tmp_path)
    out = tmp_path / "f.png"
    assert cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(nets), "--align", "similarity",
                     "--device", "cpu", "--no-progress"]) == 0
    assert "fused in 8 bits" not in capsys.readouterr().err
    full = read_source_set([out]).full
    assert full is not None and full[0].dtype == np.uint16
    f = full[0]
    al = align_images([scale_to_u8(a, 16), scale_to_u8(b, 16)], "similarity")
    assert al.warped[1]
    fa, fb = al.apply([a, b])
    assert f.shape == fa.shape and np.all((f == fa) | (f == fb))
    assert (f % 257 != 0).any()  # the bits below 8 are there
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = fuse(a, b, model=str(nets), align="similarity", device="cpu")
    assert r.dtype == np.uint16 and r.shape == fa.shape and np.all((r == fa) | (r == fb))


def _raw_converter_pair(tmp_path: Path) -> tuple[Path, Path, np.ndarray, np.ndarray, np.ndarray]:
    """A as an 8-bit PNG (a camera JPEG's data), B as what a raw converter exports for a shot
    1/5 as bright: an unmarked full-range 16-bit colour PNG, ``round(v * 257 * 0.2)`` (largest
    value 13107, below 16384); the 8-bit A and dark B (``round(v * 0.2)``) they hold, and B's samples."""
    y, x = np.indices((64, 72))
    v = np.stack([(x * 11 + y * 7 + 40 * c) % 256 for c in range(3)], axis=2).astype(np.uint8)
    v[6:34, 10:38] = 255  # a white patch: B's largest value 255 * 257 * 0.2 after the blur too
    base = Image.fromarray(v)
    a8 = np.asarray(base)
    b = np.asarray(base.filter(ImageFilter.GaussianBlur(3))).astype(np.float64)
    b16 = np.round(b * 257 * 0.2).astype(np.uint16)
    assert 8192 <= b16.max() < 16384  # read by its largest value: 14-bit data, 4 times too bright
    Image.fromarray(a8).save(tmp_path / "a.png")
    return tmp_path / "a.png", write_png(tmp_path / "b16.png", b16), a8, np.round(b * 0.2).astype(np.uint8), b16


def test_an_unmarked_16_bit_export_beside_an_8_bit_shot_is_read_on_its_16_bit_scale(tmp_path: Path) -> None:
    """A dark unmarked 16-bit shot beside an 8-bit one was scaled from the smallest sensor depth
    holding its largest value (14 bits: 4 times too bright; fuse saw a false exposure
    difference). Beside an 8-bit source it is read on its file's full scale, as raw converters
    write it (PNG and TIFF), with a note naming it; unmarked deeper shots together keep their
    common depth, and a deeper F measured beside them does not change how A and B are read."""
    pa, pb, a8, b8, b16 = _raw_converter_pair(tmp_path)
    tifffile.imwrite(tmp_path / "b16.tif", b16, photometric="rgb")
    for b in (pb, tmp_path / "b16.tif"):
        ra, rb = read_images([pa, b])
        assert np.array_equal(ra, a8) and np.array_equal(rb, b8), b
        assert np.array_equal(read_images([b, pa])[0], b8), b
        src = bafusion.io.read_source_set([pa, b])
        assert src.bits == 16 and src.unmarked == [False, True] and np.array_equal(src.full[1], b16)
        note = [n for n in src.notes if "no significant bits marked" in n]
        assert len(note) == 1 and note[0].startswith(f"{b}: 16-bit") and f"the 8-bit {pa}" in note[0], src.notes
        assert "largest value 13107" in note[0] and "unscaled 14-bit camera values" in note[0]
        assert not bafusion.io.read_source_set([pa, b], metadata=False).notes
    # bright (largest value above 16383): read so before, and no note
    bright = write_png(tmp_path / "bright.png", np.maximum(b16, np.uint16(40000)))
    assert not bafusion.io.read_source_set([pa, bright]).notes
    # all unmarked deeper shots: one depth common to them (14 bits here), as before
    assert read_images([pb, pb])[0].max() > 4 * b8.max() - 4
    # an 8-bit F after two unmarked 16-bit sources: A and B read as fuse reads them
    src = bafusion.io.read_source_set([pb, pb, pa], metadata=False, sources=2)
    assert np.array_equal(src.images[0], read_images([pb, pb])[0])
    assert np.array_equal(bafusion.io.read_source_set([pb, pa, pa], metadata=False, sources=2).images[0], b8)


def test_fuse_of_an_8_bit_shot_and_a_dark_16_bit_export_sees_their_true_exposure(tmp_path: Path, capsys) -> None:
    """``bafusion fuse a.png b16.png`` (B a raw converter's unmarked 16-bit export, 1/5 as bright)
    read B 4 times too bright and told of a false exposure difference (x0.8). It sees x0.20 now,
    writes a 16-bit PNG marked sBIT 16 (the 16-bit scale), and ``bafusion metrics`` measures that
    output beside its sources (an unmarked one it refuses beside an 8-bit source)."""
    pa, pb, a8, b8, _ = _raw_converter_pair(tmp_path)
    f = tmp_path / "f.png"
    assert cli_main(["fuse", str(pa), str(pb), "-o", str(f), "--model", str(_tiny_nets(tmp_path)), "--device", "cpu",
                     "--no-progress", "--force"]) == 0
    err = capsys.readouterr().err
    assert f"{pb}: 16-bit, no significant bits marked, beside the 8-bit {pa}" in err
    assert re.search(rf"{re.escape(str(pb))} differs from {re.escape(str(pa))} by about -\d.\d EV "
                     r"\(darker; channel means R/G/B x0\.2\d/0\.2\d/0\.2\d", err), err
    assert png_depth(f) == (16, 2, 16)
    ra, rb, rf = read_images([pa, pb, f])
    assert np.all((rf == ra) | (rf == rb)) and np.array_equal(rb, b8)
    assert cli_main(["metrics", str(pa), str(pb), str(f), "--metrics", "QG"]) == 0, capsys.readouterr().err


def test_reading_a_deep_pair_holds_no_float64_copies_of_it(tmp_path: Path) -> None:
    """A 24-megapixel 16-bit TIFF pair took 2.5 GiB to read (every source held as float64 and
    scaled in whole-image float64 temporaries: 4.5x one source's float64 size), more than its
    fusion needs: now about 1.6x (measured with tracemalloc, which counts numpy's arrays), and
    the same uint8 and uint16 values as the whole-image formula."""
    import tracemalloc

    rng = np.random.default_rng(5)
    paths = []
    for name in "ab":
        a = rng.integers(0, 65536, (600, 800, 3), dtype=np.uint16)
        paths.append(tmp_path / f"{name}.tif")
        tifffile.imwrite(paths[-1], a, photometric="rgb")
    one = 600 * 800 * 3 * 8  # one source as float64
    tracemalloc.start()
    try:
        src = bafusion.io.read_source_set(paths, metadata=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2.5 * one, f"reading peaked at {peak / one:.2f}x one source's float64 size"
    for p, u8, u16 in zip(paths, src.images, src.full):
        raw = tifffile.imread(p).astype(np.float64)
        assert np.array_equal(u8, np.clip(np.round(raw / 65535.0 * 255.0), 0, 255).astype(np.uint8))
        assert np.array_equal(u16, np.clip(np.round(raw / 65535.0 * 65535.0), 0, 65535).astype(np.uint16))


@pytest.mark.parametrize("maxval", [1023, 4095, 65535])
def test_a_deep_pgm_is_read_on_the_scale_its_maxval_marks_also_when_dark(tmp_path: Path, maxval: int) -> None:
    """A PGM of maxval over 255 (Pillow: mode I, every maxval decoded onto 0..65535) was taken
    for unmarked 32-bit values and scaled from its largest value: a dark frame (largest value
    a fifth of maxval) read 4x too bright alone, beside a JPEG and beside another PGM. Its
    maxval marks its scale: the samples are value / maxval of full white."""
    rng = np.random.default_rng(9)
    g8 = rng.integers(0, 256, (24, 32), dtype=np.uint8)
    dark8 = np.round(g8 / 5.0).astype(np.uint8)  # at most 51 of 255
    values = np.round(dark8.astype(np.float64) / 255 * maxval).astype(">u2")
    pgm = tmp_path / "dark.pgm"
    pgm.write_bytes(f"P5\n32 24\n{maxval}\n".encode() + values.tobytes())
    jpg = tmp_path / "a.jpg"
    Image.fromarray(g8).save(jpg, quality=95)
    assert np.abs(read_image(pgm).astype(int) - dark8).max() <= 1
    assert np.abs(read_images([jpg, pgm])[1].astype(int) - dark8).max() <= 1
    assert np.abs(read_images([pgm, pgm])[0].astype(int) - dark8).max() <= 1
    src = bafusion.io.read_source_set([jpg, pgm])
    assert src.bits == 16 and src.full_scale and src.unmarked == [False, False]
    assert np.abs(src.full[1].astype(int) - np.round(values / maxval * 65535)).max() <= 1


@pytest.mark.parametrize("plain", [False, True])
@pytest.mark.parametrize("maxval", [1023, 65535])
def test_a_deep_colour_ppm_is_read_at_its_depth_as_a_16_bit_png_is(tmp_path: Path, maxval: int, plain: bool) -> None:
    """A colour PPM of maxval over 255 (P6, or plain P3) is decoded by Pillow onto 8 bits (mode
    RGB): two 16-bit PPMs became an 8-bit fusion without a line, while 16-bit PNGs and TIFFs (and
    deep gray PGMs) are read and fused at 16 bits. Now its samples are read on the 16-bit scale its
    maxval marks, as the PGM's; a file cut short is refused naming it."""
    rng = np.random.default_rng(4)
    values = rng.integers(0, maxval + 1, (6, 5, 3))
    ppm = tmp_path / "c.ppm"
    if plain:
        ppm.write_bytes(f"P3\n# a comment\n5 6\n{maxval}\n".encode() + " ".join(map(str, values.ravel())).encode() + b"\n")
    else:
        ppm.write_bytes(f"P6\n5 6\n{maxval}\n".encode() + values.astype(">u2").tobytes())
    full = np.round(values / maxval * 65535).astype(np.uint16)
    png = tmp_path / "c.png"
    png.write_bytes(bafusion.io.png16_bytes(full))
    src, ref = bafusion.io.read_source_set([ppm, ppm]), bafusion.io.read_source_set([png, png])
    assert (src.bits, src.depths, src.full_scale) == (ref.bits, ref.depths, ref.full_scale) == (16, [16, 16], True)
    assert np.array_equal(src.full[0], full) and np.array_equal(src.images[0], ref.images[0])
    if not plain:
        ppm.write_bytes(ppm.read_bytes()[:-7])
        with pytest.raises(InputFileError, match=r"c\.ppm: damaged PPM: 86 of its 90 samples"):
            bafusion.io.read_source_set([ppm, png])
