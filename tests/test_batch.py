"""fuse-dir (batches), 16-bit in / 16-bit out, EXIF orientation and ICC/EXIF carried, and the
one-scene check of ``fuse`` (issue 14)."""

from __future__ import annotations

import ast
import errno
import io
import os
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from bafusion.cli import main as cli_main
from bafusion.fusion import batch
from bafusion.fusion.scene import MIN_CORRELATION, scene_correlation
from bafusion.io import png16_bytes, png_depth, read_source_set, scale_to_u8

N = 80  # above bafusion.fusion.scene.MIN_SIDE, so the one-scene check runs


def texture(seed: int, n: int = N) -> np.ndarray:
    """A smooth random scene (gray float in [0, 1])."""
    t = ndimage.gaussian_filter(np.random.default_rng(seed).random((n, n)), 3)
    return (t - t.min()) / (t.max() - t.min())


def pair(seed: int, colour: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """One scene focused on the left (A) and on the right (B), uint8."""
    t = texture(seed)
    blur = ndimage.gaussian_filter(t, 2)
    a, b = t.copy(), t.copy()
    a[:, N // 2:] = blur[:, N // 2:]
    b[:, : N // 2] = blur[:, : N // 2]
    out = []
    for x in (a, b):
        x8 = np.round(x * 255).astype(np.uint8)
        out.append(np.stack([x8, x8[::-1], 255 - x8], axis=2) if colour else x8)
    return out[0], out[1]


@pytest.fixture
def nets(tiny_nets: Path) -> Path:
    return tiny_nets


def test_scene_correlation_tells_one_scene_from_two() -> None:
    a, b = pair(1)
    c, _ = pair(2)
    assert scene_correlation(a, b) > MIN_CORRELATION > scene_correlation(a, c)
    assert scene_correlation(a[:20, :20], c[:20, :20]) is None  # too small to judge
    flat = np.full((N, N), 128, np.uint8)
    assert scene_correlation(flat, flat.copy()) is None  # two shots of a blank page: nothing to judge by
    assert scene_correlation(flat, a[..., 0] if a.ndim == 3 else a) == 0.0  # a lens cap beside a scene
    assert scene_correlation(a[..., 0] if a.ndim == 3 else a, flat) == 0.0 < MIN_CORRELATION


def test_the_scene_check_reduces_camera_size_shots_in_bands_and_once() -> None:
    """A camera-size shot is reduced without a float64 copy of it (24 MP: the check took 6 s and
    1.5 GB before), to the same values as the whole-image reduction, and the check and the motion
    estimate of one fusion reduce each shot once."""
    import math
    import tracemalloc

    from bafusion.fusion import scene
    from bafusion.io import gray_float

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (1203, 1810, 3), dtype=np.uint8)
    k = math.ceil(1810 / scene.WORK_SIDE)
    whole = gray_float(big)[: 1203 // k * k, : 1810 // k * k]
    ref = whole.reshape(1203 // k, k, 1810 // k, k).mean(axis=(1, 3)) / 255.0
    got, got_k = scene._reduce_k(big)
    assert got_k == k and np.array_equal(got, ref)  # to the bit: the check's numbers do not change
    assert np.array_equal(scene._reduce_k(big[..., :1])[0], scene._reduce_k(big[..., 0])[0])
    other = np.roll(big, 1, axis=1)  # still: the motion estimate stops early
    tracemalloc.start()
    try:
        scene.check_one_scene([big, other], ["a", "b"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2 * big.size  # a float64 copy of the shot alone is 8 x its size
    bands = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scene, "gray_float", lambda a: bands.append(1) or gray_float(a))
        scene._reduce_k(big)
        one = len(bands)  # the float work of one reduction
        with scene.shared_reductions():
            r1 = scene._reduce_k(big)[0]
            assert scene._reduce_k(big)[0] is r1 and not r1.flags.writeable
            scene.check_one_scene([big, other], ["a", "b"])
            scene.shot_motions([big, other])
        assert len(bands) == 3 * one  # the block reduced each of its two shots once
        scene.check_one_scene([big, other, big], ["a", "b", "c"])
        assert len(bands) == 5 * one  # the first shot once for both correlations
    assert np.array_equal(scene._reduce_k(big)[0], r1)


def test_two_flat_shots_are_fused_not_refused(tmp_path: Path, nets: Path, capsys) -> None:
    """Two shots of a blank page (no texture at any scale) are not taken for two scenes; the
    summary line gives the fusion's time and the whole command's."""
    flat = np.full((N, N, 3), 200, np.uint8)
    for n in ("a", "b"):
        Image.fromarray(flat).save(tmp_path / f"{n}.png")
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.png"),
                     "--model", str(nets), "--device", "cpu"]) == 0
    assert np.array_equal(np.asarray(Image.open(tmp_path / "f.png")), flat)
    import re

    m = re.search(r"\(([0-9.]+) s fusing on cpu, ([0-9.]+) s in all with reading", capsys.readouterr().out)
    assert m is not None and float(m[1]) <= float(m[2])


def test_fuse_refuses_two_scenes_unless_forced(tmp_path: Path, nets: Path, capsys) -> None:
    a, _ = pair(1)
    _, c = pair(2)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(c).save(tmp_path / "c.png")
    argv = ["fuse", str(tmp_path / "a.png"), str(tmp_path / "c.png"), "--model", str(nets), "--device", "cpu"]
    assert cli_main([*argv, "-o", str(tmp_path / "f.png")]) == 2
    err = capsys.readouterr().err
    assert "c.png: does not look like the same scene as" in err and "--force" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "f.png").exists()
    assert cli_main([*argv, "-o", str(tmp_path / "f.png"), "--force"]) == 0
    assert (tmp_path / "f.png").is_file()


def test_fuse_dir_fuses_the_good_stacks_and_lists_the_broken_ones(tmp_path: Path, nets: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for name, seed in (("good", 1), ("other", 3)):
        a, b = pair(seed)
        Image.fromarray(a).save(src / f"{name}-A.png")
        Image.fromarray(b).save(src / f"{name}-B.png")
    (src / "stack").mkdir()
    for i, im in enumerate(pair(4, colour=False)):
        Image.fromarray(im).save(src / "stack" / f"shot{i}.png")
    a, b = pair(5)
    Image.fromarray(a).save(src / "trunc-A.png")
    (src / "trunc-B.png").write_bytes((src / "good-B.png").read_bytes()[:200])  # truncated
    Image.fromarray(a).save(src / "size-A.png")
    Image.fromarray(b[:-4]).save(src / "size-B.png")
    Image.fromarray(a).save(src / "mixed-A.png")
    Image.fromarray(pair(6)[1]).save(src / "mixed-B.png")
    Image.fromarray(a).save(src / "alone-A.png")
    out = tmp_path / "out"
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == batch.EXIT_SKIPPED
    o, err = capsys.readouterr()
    assert sorted(p.name for p in out.iterdir()) == [batch.OUTPUT_MARKER, "good.png", "other.png", "stack.png"]
    assert "fused 3 stack(s)" in o and "skipped 4" in o
    skipped = [line for line in err.splitlines() if "skipped" in line]
    assert len(skipped) == 4
    assert any("trunc-B.png: unreadable image" in line for line in skipped)
    assert any("size-B.png: size" in line for line in skipped)
    assert any("mixed-B.png: does not look like the same scene" in line for line in skipped)
    assert any("alone-A.png" in line and "only 1 shot" in line for line in skipped)
    fused = np.asarray(Image.open(out / "good.png"))
    a, b = pair(1)
    assert np.all((fused == a) | (fused == b))
    # resume: existing outputs are left alone, the broken ones are still reported
    before = (out / "good.png").stat().st_mtime_ns
    (out / "other.png").unlink()
    assert cli_main([*argv, "--skip-existing"]) == batch.EXIT_SKIPPED
    assert (out / "good.png").stat().st_mtime_ns == before and (out / "other.png").is_file()
    assert "2 already there" in capsys.readouterr().out  # good, stack
    # all good: exit 0; nothing to fuse: exit 2
    for p in src.glob("*"):
        if p.is_file() and not p.name.startswith(("good", "other")):
            p.unlink()
    assert cli_main(argv) == 0
    assert cli_main(["fuse-dir", str(tmp_path / "nets"), str(out), "--model", str(nets), "--device", "cpu"]) == 2
    assert "no pair or stack to fuse" in capsys.readouterr().err


def test_16_bit_round_trip_keeps_16_bits_and_the_8_bit_decision(tmp_path: Path) -> None:
    a8, b8 = pair(1)
    nets = "default"  # the shipped nets: a decision that mixes A and B (tiny random nets take one side)
    rng = np.random.default_rng(0)
    # 16-bit data whose 8-bit version is a8/b8 (low bits random, as from a camera)
    a16, b16 = ((x.astype(np.int64) * 257 + rng.integers(-128, 128, x.shape)).clip(0, 65535).astype(np.uint16)
                for x in (a8, b8))
    assert np.array_equal(scale_to_u8(a16.astype(float), 16), a8)
    (tmp_path / "a16.png").write_bytes(png16_bytes(a16))
    (tmp_path / "b16.png").write_bytes(png16_bytes(b16))
    Image.fromarray(a8).save(tmp_path / "a8.png")
    Image.fromarray(b8).save(tmp_path / "b8.png")
    for bits, ext in (("8", "png"), ("16", "png"), ("16", "tif")):
        assert cli_main(["fuse", str(tmp_path / f"a{bits}.png"), str(tmp_path / f"b{bits}.png"), "-o",
                         str(tmp_path / f"f{bits}.{ext}"), "--model", str(nets), "--device", "cpu"]) == 0
    f8 = np.asarray(Image.open(tmp_path / "f8.png"))
    f16 = read_source_set([tmp_path / "f16.png"]).full[0]
    assert f16.dtype == np.uint16 and f16.shape == a16.shape
    assert np.array_equal(tifffile.imread(tmp_path / "f16.tif"), f16)
    take_a16 = np.all(f16 == a16, axis=2)
    assert np.all(take_a16 | np.all(f16 == b16, axis=2)), "every pixel is A's or B's 16-bit pixel"
    differ = ~np.all(a8 == b8, axis=2)
    take_a8 = np.all(f8 == a8, axis=2)
    assert np.array_equal(take_a16[differ], take_a8[differ]), "the 16-bit decision is the 8-bit one"
    assert np.array_equal(scale_to_u8(f16.astype(float), 16), f8)
    assert 0.1 < take_a16[differ].mean() < 0.9  # a real mix of both sources


def test_16_bit_sources_to_jpeg_say_they_lose_bits(tmp_path: Path, nets: Path, capsys) -> None:
    a8, b8 = pair(1)
    for n, x in (("a", a8), ("b", b8)):
        (tmp_path / f"{n}.png").write_bytes(png16_bytes(x.astype(np.uint16) * 257))
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.jpg"),
                     "--model", str(nets), "--device", "cpu"]) == 0
    assert "written with 8 bits per sample" in capsys.readouterr().err


@pytest.mark.parametrize("fmt", ["jpg", "png", "tif16"])
def test_exif_orientation_is_applied_on_read(tmp_path: Path, fmt: str) -> None:
    a8, _ = pair(1)
    a8 = a8[:, :60]  # not square
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view
    p = tmp_path / f"a.{fmt[:3]}"
    if fmt == "tif16":
        tifffile.imwrite(p, a8.astype(np.uint16) * 257, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    else:
        Image.fromarray(a8).save(p, exif=exif.tobytes(), **({"quality": 100} if fmt == "jpg" else {}))
    src = read_source_set([p])
    assert src.images[0].shape[:2] == (60, N)
    if fmt != "jpg":
        assert np.array_equal(src.images[0], np.rot90(a8, -1))
    if fmt == "tif16":
        assert np.array_equal(src.full[0], np.rot90(a8, -1).astype(np.uint16) * 257)


@pytest.mark.parametrize("bits", [8, 16])
def test_icc_and_exif_of_the_first_source_are_carried(tmp_path: Path, nets: Path, bits: int) -> None:
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x0112] = 3  # stored upside down: read back as a8
    exif[0x8769] = {0x829A: 0.01}  # ExposureTime, in the Exif sub-IFD
    a8, b8 = pair(1)
    stored = np.ascontiguousarray(a8[::-1, ::-1])
    if bits == 16:
        (tmp_path / "a.png").write_bytes(png16_bytes(stored.astype(np.uint16) * 257, exif=exif.tobytes(), icc=icc))
        (tmp_path / "b.png").write_bytes(png16_bytes(b8.astype(np.uint16) * 257))
    else:
        Image.fromarray(stored).save(tmp_path / "a.png", exif=exif.tobytes(), icc_profile=icc)
        Image.fromarray(b8).save(tmp_path / "b.png")
    for ext in ("png", "jpg", "tif", "webp"):
        out = tmp_path / f"f.{ext}"
        assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out),
                         "--model", str(nets), "--device", "cpu"]) == 0
        with Image.open(out) as im:
            assert im.info.get("icc_profile") == icc, ext
            got = im.getexif()  # a 16-bit TIFF too: it had the ICC profile only
            assert got.get(0x010F) == "TestCam", ext
            assert got.get(0x0112, 1) == 1, "pixels are already turned: orientation reset"
            assert got.get_ifd(0x8769).get(0x829A) == 0.01, ext
            assert got.get(0x0131, "").startswith("bafusion "), ext


@pytest.mark.parametrize("bits", [8, 16])
def test_the_first_sources_resolution_is_carried(tmp_path: Path, nets: Path, bits: int) -> None:
    """A 300 dpi source gave outputs of no resolution (JPEG, PNG, BMP) or 1 dpi (TIFF)."""
    a8, b8 = pair(1)
    if bits == 16:
        import tifffile

        for n, x in (("a", a8), ("b", b8)):
            tifffile.imwrite(tmp_path / f"{n}.tif", x.astype(np.uint16) * 257, photometric="rgb",
                             resolution=(300, 300), resolutionunit="INCH", metadata=None)
        srcs = [str(tmp_path / "a.tif"), str(tmp_path / "b.tif")]
    else:
        Image.fromarray(a8).save(tmp_path / "a.jpg", dpi=(300, 300))
        Image.fromarray(b8).save(tmp_path / "b.jpg", dpi=(72, 72))
        srcs = [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    for ext in ("png", "jpg", "tif", "bmp"):
        out = tmp_path / f"f.{ext}"
        assert cli_main(["fuse", *srcs, "-o", str(out), "--model", str(nets), "--device", "cpu"]) == 0
        with Image.open(out) as im:
            assert im.info.get("dpi") is not None, ext
            assert [round(v) for v in im.info["dpi"]] == [300, 300], ext


def test_fuse_writes_webp_losslessly_and_lossy_with_quality(tmp_path: Path, nets: Path, capsys) -> None:
    """``fuse -o f.webp`` was refused ("WebP is not an output format of bafusion fuse"): it
    writes the fused pixels exactly (those of ``-o f.png``), with the first source's EXIF and
    ICC profile and a note that the resolution is not written; ``--quality`` writes it lossy
    and smaller; ``--quality`` for a .png is refused before any work."""
    from PIL import ImageCms

    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    a8, b8 = pair(1)
    Image.fromarray(a8).save(tmp_path / "a.jpg", quality=100, dpi=(300, 300), exif=exif.tobytes(), icc_profile=icc)
    Image.fromarray(b8).save(tmp_path / "b.jpg", quality=100)
    srcs = [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg"), "--model", str(nets), "--device", "cpu"]
    assert cli_main(["fuse", *srcs, "-o", str(tmp_path / "f.png")]) == 0
    capsys.readouterr()
    out = tmp_path / "f.webp"
    assert cli_main(["fuse", *srcs, "-o", str(out)]) == 0
    err = capsys.readouterr().err
    with Image.open(out) as im, Image.open(tmp_path / "f.png") as ref:
        assert im.format == "WEBP" and np.array_equal(np.asarray(im), np.asarray(ref))
        assert im.info.get("icc_profile") == icc and im.getexif().get(0x010F) == "TestCam"
    assert (f"{out}: the first source's resolution (dpi) is not written (.webp cannot hold it; a .png, .tif or .jpg "
            "output keeps it)") in err, err
    lossy = tmp_path / "q.webp"
    assert cli_main(["fuse", *srcs, "-o", str(lossy), "--quality", "60"]) == 0
    with Image.open(lossy) as im, Image.open(tmp_path / "f.png") as ref:
        assert not np.array_equal(np.asarray(im), np.asarray(ref))
        assert im.getexif().get(0x010F) == "TestCam"
    assert lossy.stat().st_size < out.stat().st_size
    capsys.readouterr()
    assert cli_main(["fuse", *srcs, "-o", str(tmp_path / "g.png"), "--quality", "60"]) == 2
    assert (f"bafusion fuse: error: {tmp_path / 'g.png'}: --quality 60: a .png output takes no quality (only .jpg and "
            ".webp outputs are written lossily)") in capsys.readouterr().err
    assert not (tmp_path / "g.png").exists()


def test_fuse_to_a_webp_too_wide_for_the_format_is_refused_before_fusing(tmp_path: Path, monkeypatch,
                                                                        capsys) -> None:
    """A result wider than a WebP holds (16383 px) failed at the write, after the fusion's minutes."""
    from bafusion.fusion import rule

    monkeypatch.setattr(rule, "fuse_stack", lambda *a, **k: pytest.fail("fused"))
    rng = np.random.default_rng(0)
    for n in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (4, 16384), dtype=np.uint8)).save(tmp_path / f"{n}.png")
    out = tmp_path / "f.webp"
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out), "--force",
                     "--model", str(tmp_path / "no-nets"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert (f"{out}: the image is 16384 x 4 pixels and a WebP holds at most 16383 x 16383: write .png or .tif"
            in err), err
    assert not out.exists()


def test_fuse_to_webp_without_pillow_webp_is_refused_before_any_work(tmp_path: Path, monkeypatch, capsys) -> None:
    """A Pillow built without libwebp: ``fuse -o f.webp`` says so before reading anything
    (the sources here do not exist), not "unknown image format" after the fusion."""
    from PIL import features

    check = features.check
    monkeypatch.setattr(features, "check", lambda name: False if name == "webp" else check(name))
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.webp")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'f.webp'}: this Pillow cannot write WebP (it was built without libwebp" in err, err
    assert "install a Pillow with WebP support" in err


def test_an_exif_too_large_for_a_jpeg_is_shortened_and_said(tmp_path: Path, nets: Path, capsys) -> None:
    a8, b8 = pair(1)
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif.get_ifd(0x8769)[0x927C] = b"\x01" * 70000  # a 70 KB MakerNote: more than a JPEG's APP1 holds
    Image.fromarray(a8).save(tmp_path / "a.png", exif=exif.tobytes())
    Image.fromarray(b8).save(tmp_path / "b.png")
    out = tmp_path / "f.jpg"
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out),
                     "--model", str(nets), "--device", "cpu"]) == 0
    with Image.open(out) as im:
        assert im.getexif().get(0x010F) == "TestCam"
    assert "EXIF is written without MakerNote" in capsys.readouterr().err


def test_a_pngs_gamma_and_chromaticities_go_to_a_png_output_and_a_jpeg_says_it_lacks_them(
        tmp_path: Path, nets: Path, capsys) -> None:
    from PIL import PngImagePlugin

    a8, b8 = pair(1)
    info = PngImagePlugin.PngInfo()
    info.add(b"gAMA", (45455).to_bytes(4, "big"))
    Image.fromarray(a8).save(tmp_path / "a.png", pnginfo=info)
    Image.fromarray(b8).save(tmp_path / "b.png", pnginfo=info)
    for ext in ("png", "jpg"):
        out = tmp_path / f"f.{ext}"
        assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out),
                         "--model", str(nets), "--device", "cpu"]) == 0
        err = capsys.readouterr().err
        if ext == "png":
            with Image.open(out) as im:
                assert im.info.get("gamma") == 0.45455
            assert "colour description" not in err
        else:
            assert "f.jpg: the first source's PNG colour description (PNG gamma 0.45455) is not written" in err, err


def test_the_exif_image_size_is_the_output_size(tmp_path: Path, nets: Path) -> None:
    """A camera's portrait shot is stored turned (Orientation 6) with ExifImageWidth/Height of
    the stored frame: the output (turned, orientation reset) gets its own size there; a cropped
    image (--align) too; the other EXIF is kept, and EXIF without a size is stored unchanged."""
    from bafusion.io import write_image

    a8, b8 = pair(1)
    a8, b8 = a8[:, :60], b8[:, :60]  # not square: 60 wide, 80 high as viewed
    for n, x in (("a", a8), ("b", b8)):
        stored = np.ascontiguousarray(np.rot90(x, 1))  # 80 wide, 60 high: Orientation 6 turns it back
        exif = Image.Exif()
        exif[0x0112], exif[0x010F] = 6, "TestCam"
        exif.get_ifd(0x8769)[0xA002], exif.get_ifd(0x8769)[0xA003] = stored.shape[1], stored.shape[0]
        exif.get_ifd(0x8769)[0x9003] = "2026:01:02 03:04:05"
        Image.fromarray(stored).save(tmp_path / f"{n}.png", exif=exif.tobytes())
    for ext in ("png", "jpg"):
        out = tmp_path / f"f.{ext}"
        assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(out),
                         "--model", str(nets), "--device", "cpu"]) == 0
        with Image.open(out) as im:
            got = im.getexif()
            sub = got.get_ifd(0x8769)
            assert im.size == (60, N), ext
            assert (sub.get(0xA002), sub.get(0xA003)) == (60, N), ext
            assert got.get(0x0112) == 1 and got.get(0x010F) == "TestCam" and sub.get(0x9003) == "2026:01:02 03:04:05"
    src = read_source_set([tmp_path / "a.png"])
    write_image(tmp_path / "crop.png", src.images[0][3:50, 5:40], exif=src.exif)  # as --align crops
    with Image.open(tmp_path / "crop.png") as im:
        sub = im.getexif().get_ifd(0x8769)
        assert (sub.get(0xA002), sub.get(0xA003)) == (35, 47)
    bare = Image.Exif()
    bare[0x010F] = "TestCam"
    write_image(tmp_path / "bare.png", src.images[0], exif=bare.tobytes())
    with Image.open(tmp_path / "bare.png") as im:
        im.load()
        assert im.info["exif"].removeprefix(b"Exif\0\0") == bare.tobytes().removeprefix(b"Exif\0\0")  # as it was


def test_sources_of_different_colour_profiles_are_noted(tmp_path: Path, nets: Path, capsys) -> None:
    """The result carries the first source's profile (or none) and colours are not converted:
    ``fuse`` and ``fuse-dir`` say so on stderr for each shot whose profile differs from the
    first's (or that has one where the first has none, or the reverse); one profile written at
    two times (creation date, profile ID) is the same profile."""
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    other = srgb[:-4] + b"P3XX"  # a distinct RGB profile
    later = srgb[:24] + b"\x07\xea\x00\x01\x00\x02\x00\x03\x00\x04\x00\x05" + srgb[36:]  # another date
    a8, b8 = pair(1)
    shots = {"a-srgb": (a8, srgb), "a-none": (a8, None), "b-other": (b8, other), "b-later": (b8, later),
             "b-none": (b8, None)}
    for name, (x, icc) in shots.items():
        Image.fromarray(x).save(tmp_path / f"{name}.png", **({"icc_profile": icc} if icc else {}))

    def fuse(a: str, b: str) -> str:
        out = tmp_path / f"{a}+{b}.png"
        assert cli_main(["fuse", str(tmp_path / f"{a}.png"), str(tmp_path / f"{b}.png"), "-o", str(out),
                         "--model", str(nets), "--device", "cpu"]) == 0
        with Image.open(out) as im:
            assert im.info.get("icc_profile") == shots[a][1]  # the first's, colours not converted
        return capsys.readouterr().err

    err = fuse("a-srgb", "b-other")
    assert f"{tmp_path / 'b-other.png'} has a different colour profile from {tmp_path / 'a-srgb.png'}" in err
    assert "the result carries" in err and len(err.strip().splitlines()) == 1, err
    assert "has a colour profile ('sRGB built-in') and" in fuse("a-none", "b-other")
    assert "has no colour profile and" in fuse("a-srgb", "b-none")
    assert "colour profile" not in fuse("a-srgb", "b-later") + fuse("a-none", "b-none")

    src = tmp_path / "in"
    src.mkdir()
    for n, shot in (("A", "a-srgb"), ("B", "b-other")):
        (src / f"p-{n}.png").write_bytes((tmp_path / f"{shot}.png").read_bytes())
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(nets), "--device", "cpu",
                     "--quiet"]) == 0
    # after the stack's name, as its motion and alignment lines ("bafusion fuse-dir: p: ...")
    assert f"bafusion fuse-dir: p: {src / 'p-B.png'} has a different colour profile" in capsys.readouterr().err


def test_png_colour_chunks_and_profiles_not_written_are_noted_truly(tmp_path: Path, nets: Path, capsys) -> None:
    """Shots differing only in PNG gAMA/cHRM/sRGB chunks were fused in silence (the result had
    A's gamma, B's pixels mislabelled); a CMYK or gray A's profile, not written on an RGB
    result, was said to be carried; an A with an sRGB chunk beside a B with a profile was said
    to carry none while the result had A's sRGB chunk. Each is now said as it is."""
    import struct
    import zlib

    from PIL import ImageCms

    def chunked(x: np.ndarray, name: str, chunks: list[tuple[bytes, bytes]]) -> None:
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, "PNG")
        d = buf.getvalue()
        ext = b"".join(struct.pack(">I", len(c)) + t + c + struct.pack(">I", zlib.crc32(t + c)) for t, c in chunks)
        (tmp_path / name).write_bytes(d[:33] + ext + d[33:])

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    a8, b8 = pair(1)
    chunked(a8, "a-g45.png", [(b"gAMA", struct.pack(">I", 45455))])
    chunked(b8, "b-g55.png", [(b"gAMA", struct.pack(">I", 55555))])
    chunked(b8, "b-g45.png", [(b"gAMA", struct.pack(">I", 45455))])
    chunked(a8, "a-srgbchunk.png", [(b"sRGB", b"\0")])
    Image.fromarray(b8).save(tmp_path / "b-srgb.png", icc_profile=srgb)
    Image.fromarray(a8).convert("CMYK").save(tmp_path / "a-cmyk.jpg", icc_profile=srgb[:16] + b"CMYK" + srgb[20:])
    from bafusion.io import to_gray_u8

    Image.fromarray(to_gray_u8(a8)).save(tmp_path / "a-gray.png", icc_profile=srgb[:16] + b"GRAY" + srgb[20:])

    def fuse(a: str, b: str) -> tuple[str, Path]:
        out = tmp_path / f"{a}+{b}.png"
        assert cli_main(["fuse", str(tmp_path / a), str(tmp_path / b), "-o", str(out),
                         "--model", str(nets), "--device", "cpu"]) == 0
        return capsys.readouterr().err, out

    err, _ = fuse("a-g45.png", "b-g55.png")
    assert (f"{tmp_path / 'b-g55.png'} has a different colour description from {tmp_path / 'a-g45.png'} "
            f"(PNG gamma 0.55555; {tmp_path / 'a-g45.png'}: PNG gamma 0.45455); the result carries "
            f"{tmp_path / 'a-g45.png'}'s PNG gamma 0.45455 (colours are not converted)") in err, err
    assert cli_main(["fuse", str(tmp_path / "a-g45.png"), str(tmp_path / "b-g55.png"), "-o", str(tmp_path / "g.jpg"),
                     "--model", str(nets), "--device", "cpu"]) == 0
    assert (f"the result carries no colour description (.jpg cannot hold {tmp_path / 'a-g45.png'}'s PNG gamma "
            "0.45455)") in capsys.readouterr().err
    assert "colour" not in fuse("a-g45.png", "b-g45.png")[0]
    err, out = fuse("a-cmyk.jpg", "b-srgb.png")
    assert (f"the result carries no profile: {tmp_path / 'a-cmyk.jpg'}'s CMYK profile does not fit an RGB "
            "image") in err, err
    assert f"{tmp_path / 'a-cmyk.jpg'} is CMYK: converted to RGB without colour management" in err, err
    with Image.open(out) as im:
        assert "icc_profile" not in im.info
    err, _ = fuse("a-gray.png", "b-srgb.png")
    assert f"the result carries no profile: {tmp_path / 'a-gray.png'}'s gray profile does not fit" in err, err
    err, out = fuse("a-srgbchunk.png", "b-srgb.png")
    assert f"the result carries {tmp_path / 'a-srgbchunk.png'}'s PNG sRGB chunk" in err, err
    with Image.open(out) as im:
        assert "srgb" in im.info and "icc_profile" not in im.info


def _rgb_profile(name: str, primaries: tuple[tuple[float, float, float], ...]) -> bytes:
    """A minimal ICC v2 RGB profile (matrix and gamma 2.2) whose description is ``name``."""
    import struct

    def s15(x: float) -> bytes:
        return struct.pack(">i", round(x * 65536))

    def xyz(x: float, y: float, z: float) -> bytes:
        return b"XYZ " + b"\0" * 4 + s15(x) + s15(y) + s15(z)

    text = name.encode() + b"\0"
    curve = b"curv" + b"\0" * 4 + struct.pack(">IH", 1, round(2.2 * 256))
    tags = [(b"desc", b"desc" + b"\0" * 4 + struct.pack(">I", len(text)) + text + b"\0" * 78),
            (b"cprt", b"text" + b"\0" * 4 + b"none\0"), (b"wtpt", xyz(0.9642, 1.0, 0.8249)),
            *((sig, xyz(*p)) for sig, p in zip((b"rXYZ", b"gXYZ", b"bXYZ"), primaries)),
            *((sig, curve) for sig in (b"rTRC", b"gTRC", b"bTRC"))]
    off, table, data = 128 + 4 + 12 * len(tags), b"", b""
    for sig, d in tags:
        data += b"\0" * (-(off + len(data)) % 4)
        table += sig + struct.pack(">II", off + len(data), len(d))
        data += d
    body = struct.pack(">I", len(tags)) + table + data
    header = (struct.pack(">I", 128 + len(body)) + b"none" + bytes([2, 0x10, 0, 0]) + b"mntrRGB XYZ " + b"\0" * 12
              + b"acspAPPL" + b"\0" * 24 + s15(0.9642) + s15(1.0) + s15(0.8249) + b"\0" * 48)
    assert len(header) == 128
    return header + body


def test_the_colour_profile_note_names_both_profiles(tmp_path: Path, nets: Path, capsys) -> None:
    """A of sRGB and B of Display P3 (or the reverse) got "b.png has a different colour profile
    from a.png", naming neither profile: the user could not tell which shot needs converting.
    The note names both (the profiles' descriptions; an unreadable one is "an ICC profile")."""
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    p3 = _rgb_profile("Display P3", ((0.5151, 0.2412, -0.0011), (0.2920, 0.6922, 0.0419), (0.1571, 0.0666, 0.7841)))
    a8, b8 = pair(1)
    for name, x, icc in (("a-srgb", a8, srgb), ("b-p3", b8, p3), ("a-p3", a8, p3), ("b-srgb", b8, srgb),
                         ("b-junk", b8, b"\0" * 200), ("b-none", b8, None)):
        Image.fromarray(x).save(tmp_path / f"{name}.png", **({"icc_profile": icc} if icc else {}))

    def note(a: str, b: str) -> str:
        assert cli_main(["fuse", str(tmp_path / f"{a}.png"), str(tmp_path / f"{b}.png"), "-o",
                         str(tmp_path / "f.png"), "--model", str(nets), "--device", "cpu"]) == 0
        return capsys.readouterr().err

    a, b = tmp_path / "a-srgb.png", tmp_path / "b-p3.png"
    assert (f"{b} has a different colour profile from {a} ('Display P3'; {a}: 'sRGB built-in'); the result "
            f"carries {a}'s (colours are not converted)") in note("a-srgb", "b-p3")
    a, b = tmp_path / "a-p3.png", tmp_path / "b-srgb.png"
    assert f"{b} has a different colour profile from {a} ('sRGB built-in'; {a}: 'Display P3')" in note("a-p3", "b-srgb")
    err = note("a-srgb", "b-junk")  # a profile that cannot be read
    assert f"from {tmp_path / 'a-srgb.png'} (an ICC profile; {tmp_path / 'a-srgb.png'}: 'sRGB built-in')" in err, err
    assert f"has no colour profile and {tmp_path / 'a-p3.png'} one ('Display P3')" in note("a-p3", "b-none")


@pytest.mark.parametrize("bits", [8, 16])
def test_the_notes_claim_only_the_metadata_each_output_format_holds(tmp_path: Path, nets: Path, capsys,
                                                                     bits: int) -> None:
    """A .bmp output dropped the first source's ICC profile (and EXIF) while the note said the
    result carried it. For every output format fuse accepts (8- and 16-bit sources) the notes
    say what the written file holds, read back here: the profile carried or not, and the ICC
    profile or EXIF that the format cannot hold named as not written."""
    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    other = srgb[:-4] + b"P3XX"  # a distinct RGB profile
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    a8, b8 = pair(1)
    if bits == 16:
        (tmp_path / "a.png").write_bytes(png16_bytes(a8.astype(np.uint16) * 257, exif=exif.tobytes(), icc=srgb))
        (tmp_path / "b.png").write_bytes(png16_bytes(b8.astype(np.uint16) * 257, icc=other))
    else:
        Image.fromarray(a8).save(tmp_path / "a.png", exif=exif.tobytes(), icc_profile=srgb)
        Image.fromarray(b8).save(tmp_path / "b.png", icc_profile=other)
    a = tmp_path / "a.png"
    for ext in ("png", "jpg", "jpeg", "tif", "tiff", "bmp", "webp"):
        out = tmp_path / f"f.{ext}"
        assert cli_main(["fuse", str(a), str(tmp_path / "b.png"), "-o", str(out), "--model", str(nets),
                         "--device", "cpu"]) == 0
        err = capsys.readouterr().err
        with Image.open(out) as im:
            icc, has_exif = im.info.get("icc_profile"), im.getexif().get(0x010F) == "TestCam"
        assert f"{tmp_path / 'b.png'} has a different colour profile from {a}" in err, (ext, err)
        if icc:
            assert icc == srgb and f"the result carries {a}'s (colours are not converted)" in err, (ext, err)
        else:
            assert f"the result carries no profile (.{ext} cannot hold {a}'s)" in err, (ext, err)
            assert f"{out}: the first source's ICC profile" in err and "not written" in err, (ext, err)
        if not has_exif:
            assert "EXIF is not written" in err or "EXIF are not written" in err, (ext, err)
            assert ("and EXIF are not written" if not icc else "EXIF is not written") in err, (ext, err)
        else:
            assert "EXIF is not written" not in err and "EXIF are not written" not in err, (ext, err)
        expected = {"bmp": (False, False)}.get(ext, (True, True))  # a 16-bit .tif held no EXIF
        assert (icc is not None, has_exif) == expected, ext
    # a gray result with a gray profile: a .webp stores it as RGB, which that profile does not describe,
    # so the profile is not written and the notes say so (it was written: an RGB WebP tagged GRAY)
    gray = srgb[:16] + b"GRAY" + srgb[20:]
    ga, gb = pair(1, colour=False)
    for name, g, prof in (("ga.png", ga, gray), ("gb.png", gb, gray[:-4] + b"P3XX")):
        if bits == 16:
            (tmp_path / name).write_bytes(png16_bytes(g.astype(np.uint16) * 257, icc=prof))
        else:
            Image.fromarray(g).save(tmp_path / name, icc_profile=prof)
    for ext in ("png", "webp"):
        out = tmp_path / f"g.{ext}"
        assert cli_main(["fuse", str(tmp_path / "ga.png"), str(tmp_path / "gb.png"), "-o", str(out), "--model",
                         str(nets), "--device", "cpu"]) == 0
        err = capsys.readouterr().err
        with Image.open(out) as im:
            mode, icc = im.mode, im.info.get("icc_profile")
        if ext == "png":
            assert mode in ("L", "I;16", "I") and icc == gray and "not written" not in err, (mode, err)
            continue
        assert mode == "RGB" and icc is None, mode
        assert (f"the result carries no profile (.webp cannot hold {tmp_path / 'ga.png'}'s: it stores a gray result "
                "as RGB)") in err, err
        assert (f"{out}: the first source's ICC profile is not written (.webp cannot hold it: it stores a gray result "
                "as RGB, which a gray profile does not describe; a .png, .tif or .jpg output keeps it)") in err, err


def test_fuse_set_carries_the_metadata_and_says_the_notes_as_fuse(tmp_path: Path, nets: Path, capsys) -> None:
    """fuse-set wrote its fused PNGs without A's ICC profile, EXIF and resolution, and compared
    no profiles: a B of another profile was fused in silence. It writes them as fuse does and
    says fuse's notes (prefixed 'bafusion fuse-set:'); the pixels are those of the same pair
    without metadata."""
    import json

    from PIL import ImageCms

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    a8, b8 = pair(1)
    meta, bare = tmp_path / "meta", tmp_path / "bare"
    for folder in (meta, bare):
        folder.mkdir()
        (folder / "index.json").write_text(json.dumps(["p"]))
    Image.fromarray(a8).save(meta / "p-A.png", exif=exif.tobytes(), icc_profile=srgb, dpi=(300, 300))
    Image.fromarray(b8).save(meta / "p-B.png", icc_profile=srgb[:-4] + b"P3XX")
    Image.fromarray(a8).save(bare / "p-A.png")
    Image.fromarray(b8).save(bare / "p-B.png")
    for folder in (meta, bare):
        assert cli_main(["fuse-set", "--pairs", str(folder), "--models", str(nets),
                         "--out", str(tmp_path / f"{folder.name}-out"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert (f"bafusion fuse-set: {meta / 'p-B.png'} has a different colour profile from {meta / 'p-A.png'} (both "
            f"'sRGB built-in', of different contents); the result carries {meta / 'p-A.png'}'s (colours are not "
            "converted)") in err, err
    with Image.open(tmp_path / "meta-out" / "p.png") as im, Image.open(tmp_path / "bare-out" / "p.png") as plain:
        assert im.info.get("icc_profile") == srgb and im.getexif().get(0x010F) == "TestCam"
        assert [round(v) for v in im.info["dpi"]] == [300, 300]
        assert not {"icc_profile", "exif", "dpi"} & set(plain.info)  # no metadata: written as before
        assert np.array_equal(np.asarray(im), np.asarray(plain))


def test_fuse_set_says_the_metadata_not_kept_once_a_run(tmp_path: Path, nets: Path, capsys) -> None:
    """fuse-set said 'the sources' XMP is not kept' once per pair, fuse-dir once a run: a test
    set of sources with XMP repeated the same line hundreds of times. Said once, as fuse-dir."""
    import json

    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_itxt("XML:com.adobe.xmp", '<x:xmpmeta xmlns:x="adobe:ns:meta/"></x:xmpmeta>')
    folder = tmp_path / "pairs"
    folder.mkdir()
    (folder / "index.json").write_text(json.dumps(["p", "q", "r"]))
    a8, b8 = pair(1)
    for name in ("p", "q", "r"):
        Image.fromarray(a8).save(folder / f"{name}-A.png", pnginfo=meta)
        Image.fromarray(b8).save(folder / f"{name}-B.png")
    assert cli_main(["fuse-set", "--pairs", str(folder), "--models", str(nets), "--out", str(tmp_path / "out"),
                     "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert err.count("bafusion fuse-set: the sources' XMP is not kept") == 1, err


def test_xmp_and_comments_not_kept_are_noted_once(tmp_path: Path, nets: Path, capsys) -> None:
    """A source's XMP and JPEG comment were dropped in silence; ``fuse`` now names what is not
    kept in one line, ``fuse-dir`` once a run (not per pair); plain shots get no such line."""
    a8, b8 = pair(1)
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/"></x:xmpmeta>'
    Image.fromarray(a8).save(tmp_path / "a.jpg", quality=95, xmp=xmp)
    Image.fromarray(b8).save(tmp_path / "b.jpg", quality=95, comment=b"by Alice")
    Image.fromarray(a8).save(tmp_path / "a-plain.jpg", quality=95)
    Image.fromarray(b8).save(tmp_path / "b-plain.jpg", quality=95)

    def fuse(a: str, b: str) -> str:
        assert cli_main(["fuse", str(tmp_path / a), str(tmp_path / b), "-o", str(tmp_path / "F.png"),
                         "--model", str(nets), "--device", "cpu"]) == 0
        return capsys.readouterr().err

    err = fuse("a.jpg", "b.jpg")
    assert "bafusion fuse: the sources' XMP and comments are not kept" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert "not kept" not in fuse("a-plain.jpg", "b-plain.jpg")
    src = tmp_path / "in"
    src.mkdir()
    for pre in ("p", "q"):
        for n in ("A", "B"):
            (src / f"{pre}-{n}.jpg").write_bytes((tmp_path / f"{n.lower()}.jpg").read_bytes())
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(nets), "--device", "cpu",
                     "--quiet"]) == 0
    assert capsys.readouterr().err.count("are not kept") == 1


def test_a_multi_page_source_and_a_gray_source_beside_a_colour_one_are_noted(tmp_path: Path, nets: Path,
                                                                             capsys) -> None:
    """Both fused silently: a multi-page TIFF from its first page, a gray A with a colour B
    into a result gray where taken from A. ``fuse`` now says each on stderr, naming the file."""
    a8, b8 = pair(1)
    Image.fromarray(a8).save(tmp_path / "a.tif", save_all=True, append_images=[Image.fromarray(b8)])
    from bafusion.io import to_gray_u8

    Image.fromarray(to_gray_u8(a8)).save(tmp_path / "a-gray.png")
    Image.fromarray(b8).save(tmp_path / "b.png")

    def fuse(a: str) -> str:
        assert cli_main(["fuse", str(tmp_path / a), str(tmp_path / "b.png"), "-o", str(tmp_path / "F.png"),
                         "--model", str(nets), "--device", "cpu"]) == 0
        return capsys.readouterr().err

    err = fuse("a.tif")
    assert f"bafusion fuse: {tmp_path / 'a.tif'} holds 2 pages; only the first is used" in err
    assert len(err.strip().splitlines()) == 1, err
    err = fuse("a-gray.png")
    assert f"bafusion fuse: {tmp_path / 'a-gray.png'} is gray and {tmp_path / 'b.png'} colour: the result is gray" in err
    assert len(err.strip().splitlines()) == 1, err


def test_an_icc_profile_of_another_colour_space_is_not_carried(tmp_path: Path) -> None:
    """A CMYK or gray source's profile is not stored on an RGB output (nor an RGB one on a gray
    output); a profile of the output's colour space, as the file stores it, is."""
    from PIL import ImageCms

    from bafusion.io import write_image

    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    cmyk = srgb[:16] + b"CMYK" + srgb[20:]
    gray = srgb[:16] + b"GRAY" + srgb[20:]
    rgb8, _ = pair(2)
    g8 = rgb8[..., 0]
    cases = [(rgb8, srgb, srgb), (rgb8, cmyk, None), (rgb8, gray, None), (g8, gray, gray), (g8, srgb, None),
             (rgb8.astype(np.uint16) * 257, cmyk, None), (rgb8.astype(np.uint16) * 257, srgb, srgb)]
    for i, (img, icc, kept) in enumerate(cases):
        for ext in ("png", "jpg", "tif"):
            out = tmp_path / f"{i}.{ext}"
            write_image(out, img, icc=icc)
            with Image.open(out) as im:
                assert im.info.get("icc_profile") == kept, (i, ext)
    # an alpha channel is not part of the colour space: RGBA takes an RGB profile, LA a gray one
    rgba = np.dstack([rgb8, np.full(rgb8.shape[:2], 200, np.uint8)])
    la = np.dstack([g8, np.full(g8.shape, 200, np.uint8)])
    for i, (img, icc, kept) in enumerate([(rgba, srgb, srgb), (rgba, gray, None), (la, gray, gray), (la, srgb, None)]):
        for ext in ("png", "tif"):
            out = tmp_path / f"alpha{i}.{ext}"
            write_image(out, img, icc=icc)
            with Image.open(out) as im:
                assert im.mode in ("RGBA", "LA") and im.info.get("icc_profile") == kept, (i, ext, im.mode)
    # a .webp stores a gray image as RGB (LA as RGBA): a profile fits it as stored, so a gray one is
    # not written there (it was: an RGB WebP tagged GRAY, which no colour-managed reader can use)
    for i, (img, icc, kept) in enumerate([(rgb8, srgb, srgb), (rgb8, gray, None), (g8, gray, None), (g8, srgb, srgb),
                                          (la, gray, None), (rgba, srgb, srgb)]):
        out = tmp_path / f"w{i}.webp"
        write_image(out, img, icc=icc)
        with Image.open(out) as im:
            assert im.mode in ("RGB", "RGBA") and im.info.get("icc_profile") == kept, (i, im.mode)


def test_header_skips_stops_at_the_first_stack_that_may_be_fused(tmp_path: Path) -> None:
    """fuse-dir's check before torch (batch.header_skips): every stack with fuse_dir's reason when
    each fails from its headers; None as soon as one passes (the others not read) or may be kept."""
    good = [tmp_path / "g-A.png", tmp_path / "g-B.png"]
    bad = [tmp_path / "b-A.png", tmp_path / "b-B.png"]
    odd = [tmp_path / "o-A.png", tmp_path / "o-B.png"]
    for p in (*good, bad[1], odd[0]):
        Image.new("RGB", (16, 12)).save(p)
    bad[0].write_bytes(b"not an image")
    Image.new("RGB", (32, 24)).save(odd[1])  # twice the size: --align scales it onto the first's frame
    failing = batch.header_skips({"b": bad, "o": odd})
    assert [name for name, _ in failing] == ["b", "o"]
    assert "b-A.png: unreadable image" in failing[0][1] and "size 32x24 (WxH) differs from 16x12" in failing[1][1]
    assert batch.header_skips({"b": bad, "g": good, "o": odd}) is None
    assert batch.header_skips({"o": odd}, align="similarity") is None  # --align registers another size
    assert batch.header_skips({"b": bad, "o": odd}, kept=lambda name: name == "o") is None
    assert batch.header_skips({"b": bad, "o": odd}, kept=lambda name: False) == failing


def test_fuse_dir_skip_existing_refuses_another_setups_record_when_nothing_can_be_fused(
        tmp_path: Path, nets: Path, capsys) -> None:
    """fuse-dir lists a folder of which nothing can be fused before loading the nets (exit 4);
    with --skip-existing that came before OUT's record was checked: into a folder of another
    setup, or whose record is unreadable, it said exit 4 where README says such a folder is
    refused before any work (exit 2), as it is when a stack can be fused."""
    import json

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for n, x in zip("AB", pair(3)):
        Image.fromarray(x).save(src / f"p1-{n}.png")
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet", "--l", "8"]
    assert cli_main(argv) == 0
    broken = tmp_path / "broken"  # nothing in it can be fused: one shot unreadable
    broken.mkdir()
    (broken / "q-A.png").write_bytes(b"not an image")
    Image.fromarray(pair(4)[1]).save(broken / "q-B.png")
    capsys.readouterr()
    argv[1] = str(broken)
    assert cli_main([*argv, "--skip-existing", "--l", "6"]) == 2
    assert "holds outputs of other parameters (l: 8 -> 6)" in capsys.readouterr().err
    assert cli_main([*argv, "--skip-existing"]) == batch.EXIT_NONE_FUSED  # the same setup: listed, as before
    assert "q-A.png: unreadable image" in capsys.readouterr().err
    marker = out / batch.OUTPUT_MARKER
    marker.write_text(json.dumps(json.loads(marker.read_text()))[:-5])
    assert cli_main([*argv, "--skip-existing"]) == 2
    assert "fuse-dir's record is unreadable" in capsys.readouterr().err
    assert cli_main(argv) == 2  # without --skip-existing too (check_replaced reads it)
    assert "fuse-dir's record is unreadable" in capsys.readouterr().err


def test_fuse_dir_that_fuses_nothing_says_so_in_its_status(tmp_path: Path, nets: Path, capsys) -> None:
    src = tmp_path / "in"
    src.mkdir()
    a, b = pair(5)
    Image.fromarray(a).save(src / "size-A.png")
    Image.fromarray(b[:-4]).save(src / "size-B.png")
    Image.fromarray(a).save(src / "alone-A.png")
    argv = ["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == batch.EXIT_NONE_FUSED != batch.EXIT_SKIPPED
    assert "fused 0 stack(s)" in capsys.readouterr().out


def test_fuse_dir_whose_every_image_is_dropped_before_fusing_lists_them(tmp_path: Path, nets: Path, capsys) -> None:
    """A folder of one-shot stacks and names outside the rule has no stack left to fuse: each is
    listed with its reason and the status is 4 (all skipped), as documented; it was 'no pair or
    stack to fuse', exit 2, without the files. A folder with no image at all is still exit 2."""
    src = tmp_path / "in"
    src.mkdir()
    a, _ = pair(5)
    Image.fromarray(a).save(src / "x-A.jpg")
    Image.fromarray(a).save(src / "holiday.png")
    out = tmp_path / "out"
    assert cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]) == 4
    o, err = capsys.readouterr()
    assert "fused 0 stack(s)" in o and "skipped 2 (listed on stderr)" in o
    lines = err.splitlines()
    assert any("skipped" in line and "x-A.jpg" in line and "only 1 shot" in line for line in lines), err
    assert any("skipped" in line and "holiday.png" in line and "does not follow the rule" in line for line in lines), err
    assert not out.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["fuse-dir", str(empty), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]) == 2
    assert "no pair or stack to fuse" in capsys.readouterr().err


def test_naming_rule(tmp_path: Path) -> None:
    """Letters in either case, in letter order; a sub-folder is a stack in file-name order; the
    output folder inside the input is not a stack; a name both a folder and files is refused;
    dot-files in a sub-folder (macOS ``._1.png``) are not shots."""
    img = Image.fromarray(np.zeros((4, 4), np.uint8))
    for name in ("x-b.png", "x-A.jpg", "x-C.tif", "y-A.png", "y-B.png", "readme.png", "notes.txt", "solo-A.png",
                 "s-A.png"):
        img.save(tmp_path / name) if not name.endswith(".txt") else (tmp_path / name).write_text("x")
    for sub, names in (("s", ("2.png", "1.png", "._1.png", ".~2.png")), ("fused", ("a-A.png", "a-B.png"))):
        (tmp_path / sub).mkdir()
        for n in names:
            img.save(tmp_path / sub / n)
    groups, skipped = batch.find_groups(tmp_path, exclude=tmp_path / "fused")
    assert {k: [p.name for p in v] for k, v in groups.items()} == {
        "s": ["1.png", "2.png"], "x": ["x-A.jpg", "x-b.png", "x-C.tif"], "y": ["y-A.png", "y-B.png"]}
    reasons = {Path(f).name: why for f, why in skipped}
    assert set(reasons) == {"readme.png", "solo-A.png", "s-A.png"}
    assert "naming rule" not in reasons["readme.png"] and "<name>-A" in reasons["readme.png"]
    assert "only 1 shot" in reasons["solo-A.png"] and "sub-folder" in reasons["s-A.png"]


def test_an_earlier_output_folder_inside_the_input_is_no_stack(tmp_path: Path, nets: Path, capsys) -> None:
    """fuse-dir IN IN/fused, then fuse-dir IN OUT2: the earlier outputs in IN/fused were fused
    as a stack 'fused' (OUT2/fused.png, or 'shots of two scenes' and exit 3). A sub-folder
    holding fuse-dir's record is an output folder, never a stack; other sub-folders still are."""
    src = tmp_path / "in"
    src.mkdir()
    a, b = pair(3)
    for name in ("p1", "p2"):
        Image.fromarray(a).save(src / f"{name}-A.png")
        Image.fromarray(b).save(src / f"{name}-B.png")
    argv = ["--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(["fuse-dir", str(src), str(src / "fused"), *argv]) == 0, capsys.readouterr().err
    assert sorted(q.name for q in (src / "fused").glob("*.png")) == ["p1.png", "p2.png"]
    assert set(batch.find_groups(src)[0]) == {"p1", "p2"}
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out2"), *argv]) == 0, capsys.readouterr().err
    assert sorted(q.name for q in (tmp_path / "out2").glob("*.png")) == ["p1.png", "p2.png"]
    (src / "fused" / batch.OUTPUT_MARKER).unlink()  # a plain folder of images: a stack, as before
    assert set(batch.find_groups(src)[0]) == {"p1", "p2", "fused"}


def test_fuse_dir_refuses_an_output_folder_that_is_a_stack_of_the_input(tmp_path: Path, nets: Path, capsys) -> None:
    """OUT a sub-folder of IN holding shots (a stack): it was left out silently (exit 0) and its
    shot p1.png overwritten by stack p1's output; now refused before any work, naming a shot.
    An output folder inside IN that holds only outputs (an earlier run's, any --ext) is fine."""
    src = tmp_path / "in"
    (src / "beach").mkdir(parents=True)
    a, b = pair(3)
    Image.fromarray(a).save(src / "p1-A.png")
    Image.fromarray(b).save(src / "p1-B.png")
    Image.fromarray(a).save(src / "beach" / "p1.png")
    Image.fromarray(b).save(src / "beach" / "shot2.png")
    before = (src / "beach" / "p1.png").read_bytes()
    rc = cli_main(["fuse-dir", str(src), str(src / "beach"), "--model", str(nets), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "the output folder lies in" in err and "shot2.png" in err and "'beach' would not be fused" in err
    assert (src / "beach" / "p1.png").read_bytes() == before
    assert sorted(q.name for q in (src / "beach").iterdir()) == ["p1.png", "shot2.png"]
    from bafusion.errors import UserError

    with pytest.raises(UserError, match="shot2.png"):  # the function refuses too
        batch.fuse_dir(src, src / "beach", None, None)

    (src / "beach" / "p1.png").rename(tmp_path / "p1.png")
    (src / "beach" / "shot2.png").rename(src / "beach" / ".hidden.png")  # dot-files are no shots
    for ext in ("png", "jpg", "png"):  # beach/ holds outputs only: an output folder, run again
        rc = cli_main(["fuse-dir", str(src), str(src / "beach"), "--model", str(nets), "--device", "cpu", "--quiet",
                       "--ext", ext])
        assert rc == 0, capsys.readouterr().err
    assert sorted(q.name for q in (src / "beach").iterdir()) == [".bafusion-fuse-dir", ".hidden.png", "p1.jpg", "p1.png"]

    # new shots into the same output folder: p1's shots moved away, p2's added; p1.png is an
    # earlier run's output (the marker says so), not a shot of a stack (it was refused)
    for n in ("A", "B"):
        (src / f"p1-{n}.png").rename(tmp_path / f"p1-{n}.png")
    Image.fromarray(a).save(src / "p2-A.png")
    Image.fromarray(b).save(src / "p2-B.png")
    rc = cli_main(["fuse-dir", str(src), str(src / "beach"), "--model", str(nets), "--device", "cpu", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert (src / "beach" / "p2.png").is_file() and (src / "beach" / "p1.jpg").is_file()


def test_align_with_16_bit_sources_keeps_16_bits(tmp_path: Path, nets: Path, capsys) -> None:
    """Was: aligned 16-bit shots were fused in 8 bits (a line said so); now at their depth."""
    a8, b8 = pair(1)
    for n, x in (("a", a8), ("b", b8)):
        (tmp_path / f"{n}.png").write_bytes(png16_bytes(x.astype(np.uint16) * 257))
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.png"),
                     "--model", str(nets), "--device", "cpu", "--align", "translation"]) == 0
    assert "fused in 8 bits" not in capsys.readouterr().err
    assert png_depth(tmp_path / "f.png")[0] == 16


@pytest.mark.parametrize("case", ["same", "file", "missing", "ext", "avif", "quality"])
def test_fuse_dir_bad_usage_is_one_line_exit_2(tmp_path: Path, nets: Path, capsys, case: str) -> None:
    src = tmp_path / "in"
    src.mkdir()
    (tmp_path / "afile").write_text("x")
    out, extra, words = {
        "same": (src, [], "the OUT folder is also an input"),
        "file": (tmp_path / "afile", [], "is a file, not a folder"),
        "missing": (tmp_path / "o", [], "not a folder"),
        "ext": (tmp_path / "o", ["--ext", "xyz"], "--ext xyz: use png, tif (tiff), bmp, jpg (jpeg) or webp"),
        # AVIF, which fuse-dir reads, was refused as if unknown ("--ext avif: use png, ...")
        "avif": (tmp_path / "o", ["--ext", "avif"], "--ext avif: AVIF is not an output format of bafusion fuse-dir "
                                                   "(it reads AVIF sources): use png, tif (tiff), bmp, jpg (jpeg) or webp"),
        "quality": (tmp_path / "o", ["--ext", "tif", "--quality", "80"],
                    "--quality 80: a .tif output takes no quality (only .jpg and .webp outputs are written lossily)"),
    }[case]
    s = tmp_path / "nowhere" if case == "missing" else src
    rc = cli_main(["fuse-dir", str(s), str(out), "--model", str(nets), "--device", "cpu", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and words in err and len(err.strip().splitlines()) == 1, err


def test_fuse_dir_writes_webp_losslessly_lossy_with_quality_and_records_it(tmp_path: Path, nets: Path,
                                                                            capsys) -> None:
    """``fuse-dir --ext webp`` was refused ("WebP is not an output format of bafusion
    fuse-dir"): its outputs are the --ext png outputs' pixels exactly; ``--quality`` writes them
    lossy and is recorded, so --skip-existing refuses a folder of another quality."""
    src = tmp_path / "in"
    src.mkdir()
    for name, seed in (("p1", 3), ("p2", 4)):
        for n, x in zip("AB", pair(seed)):
            Image.fromarray(x).save(src / f"{name}-{n}.png")
    common = ["--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "png"), *common]) == 0
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "webp"), "--ext", "webp", *common]) == 0
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "q"), "--ext", "webp", "--quality", "50", *common]) == 0
    for name in ("p1", "p2"):
        ref = np.asarray(Image.open(tmp_path / "png" / f"{name}.png"))
        with Image.open(tmp_path / "webp" / f"{name}.webp") as im:
            assert im.format == "WEBP" and np.array_equal(np.asarray(im), ref), name
        with Image.open(tmp_path / "q" / f"{name}.webp") as im:
            assert not np.array_equal(np.asarray(im), ref), name
    import json

    assert json.loads((tmp_path / "q" / batch.OUTPUT_MARKER).read_text())["quality"] == 50
    assert json.loads((tmp_path / "webp" / batch.OUTPUT_MARKER).read_text())["quality"] is None
    capsys.readouterr()
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "webp"), "--ext", "webp", "--quality", "50",
                     "--skip-existing", *common]) == 2
    assert "another --quality (default -> 50)" in capsys.readouterr().err
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "webp"), "--ext", "webp", "--skip-existing", *common]) == 0
    assert "2 already there" in capsys.readouterr().out


def test_fuse_dir_skip_existing_takes_a_jpgs_default_quality_given_as_the_default(tmp_path: Path, nets: Path,
                                                                                   capsys) -> None:
    """A jpg folder fused without --quality was refused on a resume with --quality 95 ("another
    --quality (default -> 95)"), though 95 is the default and writes the same bytes: the record
    holds a jpg's 95 as the default. Records holding 95 (written before) or no quality (before
    --quality) are taken as the default too; another quality is still refused."""
    import json

    src = tmp_path / "in"
    src.mkdir()
    for n, x in zip("AB", pair(3)):
        Image.fromarray(x).save(src / f"p1-{n}.png")
    out = tmp_path / "out"
    common = [str(src), str(out), "--ext", "jpg", "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(["fuse-dir", *common]) == 0
    first = (out / "p1.jpg").read_bytes()
    marker = out / batch.OUTPUT_MARKER
    capsys.readouterr()
    assert cli_main(["fuse-dir", *common, "--quality", "95", "--skip-existing"]) == 0
    assert "1 already there" in capsys.readouterr().out
    assert json.loads(marker.read_text())["quality"] is None
    assert cli_main(["fuse-dir", *common, "--quality", "95", "--force"]) == 0
    assert (out / "p1.jpg").read_bytes() == first  # the same bytes: why they are the same setup
    assert json.loads(marker.read_text())["quality"] is None
    for recorded in (95, "(no key)"):  # a record of an earlier version
        doc = json.loads(marker.read_text())
        if recorded == 95:
            doc["quality"] = 95
        else:
            del doc["quality"]
        marker.write_text(json.dumps(doc))
        capsys.readouterr()
        assert cli_main(["fuse-dir", *common, "--skip-existing"]) == 0, recorded
        assert "1 already there" in capsys.readouterr().out, recorded
    assert cli_main(["fuse-dir", *common, "--quality", "90", "--skip-existing"]) == 2
    assert "another --quality (default -> 90)" in capsys.readouterr().err


def test_baseline_writes_webp_losslessly(tmp_path: Path) -> None:
    """``baseline -o F.webp`` was refused as fuse's was; it writes the PNG's pixels exactly."""
    a8, b8 = pair(1)
    Image.fromarray(a8).save(tmp_path / "a.png")
    Image.fromarray(b8).save(tmp_path / "b.png")
    for ext in ("png", "webp"):
        assert cli_main(["baseline", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o",
                         str(tmp_path / f"f.{ext}")]) == 0
    with Image.open(tmp_path / "f.webp") as im, Image.open(tmp_path / "f.png") as ref:
        assert im.format == "WEBP" and np.array_equal(np.asarray(im), np.asarray(ref))


def test_fuse_dir_webp_without_pillow_webp_is_refused_before_any_work(tmp_path: Path, nets: Path, monkeypatch,
                                                                      capsys) -> None:
    from PIL import features

    check = features.check
    monkeypatch.setattr(features, "check", lambda name: False if name == "webp" else check(name))
    (tmp_path / "in").mkdir()
    assert cli_main(["fuse-dir", str(tmp_path / "in"), str(tmp_path / "o"), "--ext", "webp", "--model", str(nets),
                     "--device", "cpu"]) == 2
    assert "--ext webp: this Pillow cannot write WebP" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_compose_full_chains_the_decisions_of_a_stack() -> None:
    rng = np.random.default_rng(2)
    a, b = (rng.integers(0, 65536, (6, 5, 3), dtype=np.uint16) for _ in range(2))
    c = rng.integers(0, 65536, (6, 5), dtype=np.uint16)  # gray among colour: replicated
    d1, d2 = rng.random((6, 5)) > 0.5, rng.random((6, 5)) > 0.5
    f = batch.compose_full([a, b, c], [d1, d2])
    first = np.where(d1[..., None], a, b)
    assert f.dtype == np.uint16
    assert np.array_equal(f[d2], first[d2]) and np.array_equal(f[~d2], np.repeat(c[..., None], 3, axis=2)[~d2])


def test_joint_stack_index_composes_the_full_depth_sources():
    """The joint stack rule's index map picks each pixel of the 16-bit output from its shot."""
    from bafusion.fusion.batch import compose_index

    rng = np.random.default_rng(0)
    full = [rng.integers(0, 65536, (5, 6, 3), dtype=np.uint16) for _ in range(3)]
    gray = rng.integers(0, 65536, (5, 6), dtype=np.uint16)
    index = rng.integers(0, 4, (5, 6)).astype(np.int16)
    out = compose_index(full + [gray], index)
    assert out.dtype == np.uint16 and out.shape == (5, 6, 3)
    for r in range(5):
        for c in range(6):
            k = index[r, c]
            want = full[k][r, c] if k < 3 else np.repeat(gray[r, c], 3)
            assert (out[r, c] == want).all()


def test_fuse_dir_resumed_bar_counts_the_kept_outputs_apart(tmp_path: Path, nets: Path, capsys, monkeypatch) -> None:
    """A batch resumed with --skip-existing drew its bar from the outputs kept as if fused: 150
    of 200 kept in a blink, then "151/200 [00:12<00:00, 151.57stack/s]" while 49 stacks were
    left, and tqdm's dynamic miniters, fed by that burst, redrew it only every ~16 stacks. Now the
    kept outputs are counted from the start and the bar shows every fused stack, at the fused
    stacks' own rate (here slower than one a second: each takes over a second)."""
    import re
    import time

    import bafusion.progress as progress

    src = tmp_path / "in"
    src.mkdir()
    for k in range(12):
        for n, x in zip("AB", pair(k % 3 + 1)):
            Image.fromarray(x).save(src / f"p{k:02d}-{n}.png")
    out = tmp_path / "out"
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu"]
    assert cli_main([*argv, "--quiet"]) == 0
    for k in (9, 10, 11):  # a batch killed after 9 of its 12 stacks
        (out / f"p{k:02d}.png").unlink()
    real = batch.fuse_files

    def slow(*args, **kwargs):
        time.sleep(1.1)
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "fuse_files", slow)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    capsys.readouterr()
    assert cli_main([*argv, "--skip-existing"]) == 0
    o, err = capsys.readouterr()
    assert "fused 3 stack(s)" in o and "9 already there" in o, o
    shown = [(int(n), rate) for n, rate in re.findall(r"(\d+)/12 \[[^<\]]*<[^,\]]*, *([^\]]+)\]", err)]
    assert {n for n, _ in shown} >= {10, 11, 12}, err  # a redraw for each fused stack
    fast = [(n, rate) for n, rate in shown if n > 9 and not rate.endswith("s/stack")]
    assert not fast, (fast, err)  # no rate of a stack a second or more: the kept ones are not in it


def test_fuse_dir_bar_counts_as_kept_exactly_the_outputs_the_loop_keeps(tmp_path: Path, nets: Path, capsys,
                                                                       monkeypatch) -> None:
    """The bar's outputs counted as kept from the start (``batch._kept``, before the loop) are
    those the loop then keeps, case by case: an output unchanged (kept), one missing, one whose
    shot changed since, one a stopped run left unlisted in the record (a partial output), one
    replaced by a link to a shot of IN (skipped); the bar ends at the total, every stack counted
    once. Without --skip-existing none is counted as kept."""
    import json
    import os

    import tqdm as tqdm_module

    import bafusion.progress as progress

    bars: list = []

    class Recording(tqdm_module.tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            if kwargs.get("desc") == "fuse-dir":
                bars.append(self)

    monkeypatch.setattr(tqdm_module, "tqdm", Recording)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    src = tmp_path / "in"
    src.mkdir()
    for k in range(5):
        for n, x in zip("AB", pair(k + 1)):
            Image.fromarray(x).save(src / f"p{k}-{n}.png")
    out = tmp_path / "out"
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu"]
    assert cli_main(argv) == 0
    (out / "p1.png").unlink()  # missing: fused
    shot = src / "p2-B.png"  # changed since: fused again
    os.utime(shot, ns=(shot.stat().st_atime_ns, shot.stat().st_mtime_ns + 10**9))
    marker = out / batch.OUTPUT_MARKER  # p3: a partial output, not listed as written: fused again
    doc = json.loads(marker.read_text())
    doc["outputs"] = [o for o in doc["outputs"] if o != "p3.png"]
    marker.write_text(json.dumps(doc))
    (out / "p4.png").unlink()  # a link to a shot of IN: not written through, skipped
    (out / "p4.png").symlink_to(src / "p4-A.png")
    bars.clear()
    capsys.readouterr()
    assert cli_main([*argv, "--skip-existing"]) == batch.EXIT_SKIPPED
    o = capsys.readouterr().out
    assert "fused 3 stack(s)" in o and "1 already there" in o, o
    assert len(bars) == 1 and bars[0].initial == 1 and bars[0].n == bars[0].total == 5, bars
    (out / "p4.png").unlink()
    bars.clear()
    assert cli_main(argv) == 0  # without --skip-existing: nothing counted as kept
    assert len(bars) == 1 and bars[0].initial == 0 and bars[0].n == bars[0].total == 5


def test_fuse_dir_no_progress_and_no_terminal_draw_no_bar(tmp_path: Path, nets: Path, capsys, monkeypatch) -> None:
    """--no-progress is honoured by fuse-dir, and without a terminal no bar is drawn either,
    but one plain line per stack."""
    import bafusion.progress as progress

    src = tmp_path / "in"
    src.mkdir()
    for n, x in zip("AB", pair(3)):
        Image.fromarray(x).save(src / f"p-{n}.png")
    for terminal, extra in ((True, ["--no-progress"]), (False, ["--no-progress"]), (False, [])):
        monkeypatch.setattr(progress, "stderr_is_terminal", lambda: terminal)
        out = tmp_path / f"out{terminal}{len(extra)}"
        rc = cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", *extra])
        err = capsys.readouterr().err
        assert rc == 0 and "stack/s" not in err and "\r" not in err, err
        # without a terminal (nohup, cron, a Snakemake log) one plain line per stack, else a
        # two-hour batch logged nothing until its end; none with --no-progress
        assert ("bafusion fuse-dir: 1/1 p: fused in " in err) == (not extra), err
        if not extra:  # again: the stack already there is said too
            assert cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu",
                             "--skip-existing"]) == 0
            assert "bafusion fuse-dir: 1/1 p: already there" in capsys.readouterr().err
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out-bar"), "--model", str(nets), "--device", "cpu"]) == 0
    assert "fuse-dir:" in capsys.readouterr().err  # the bar, asked for on a terminal


def test_fuse_dir_plain_line_of_a_stack_refused_at_once_claims_no_duration(tmp_path: Path, nets: Path, capsys,
                                                                             monkeypatch) -> None:
    """A stack refused before any work (sources of two sizes) was logged "skipped after 0.0 s",
    a duration of nothing that ran: it says "skipped (why: at the end)"; a fused one keeps its time."""
    import bafusion.progress as progress

    src = tmp_path / "in"
    src.mkdir()
    for n, x in zip("AB", pair(3)):
        Image.fromarray(x).save(src / f"p-{n}.png")
    a, b = pair(4)
    Image.fromarray(a).save(src / "q-A.png")
    Image.fromarray(b[:-8, :-8]).save(src / "q-B.png")
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    rc = cli_main(["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(nets), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 3, err
    assert "bafusion fuse-dir: 2/2 q: skipped (why: at the end)" in err, err
    assert "skipped after" not in err and "bafusion fuse-dir: 1/2 p: fused in " in err, err


@pytest.mark.parametrize("terminal", [False, True], ids=["log", "terminal"])
def test_fuse_dir_stopped_by_a_signal_still_says_why_it_skipped(tmp_path: Path, nets: Path, capsys, monkeypatch,
                                                                terminal: bool) -> None:
    """A batch stopped by SIGTERM (SLURM's time limit, ``timeout``) or Ctrl-C: its log said
    "1/3 a: skipped (why: at the end)", and the end never came: the reasons of the stacks
    skipped so far and the images outside the naming rule were lost. They are said before the
    line of the stop."""
    import signal

    import bafusion.progress as progress
    from bafusion.cli import app

    src = tmp_path / "in"
    src.mkdir()
    a, b = pair(4)
    Image.fromarray(a).save(src / "a-A.png")
    Image.fromarray(b[:-8, :-8]).save(src / "a-B.png")  # two sizes: skipped
    for name, seed in (("b", 1), ("c", 3)):
        for n, x in zip("AB", pair(seed)):
            Image.fromarray(x).save(src / f"{name}-{n}.png")
    Image.fromarray(a).save(src / "lone-A.png")
    real = batch.fuse_files

    def stopped_at_c(shots, *args, **kwargs):
        if shots[0].name.startswith("c-"):
            app._exit_on_sigterm(signal.SIGTERM, None)  # as the signal's handler does
        return real(shots, *args, **kwargs)

    monkeypatch.setattr(batch, "fuse_files", stopped_at_c)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: terminal)
    rc = cli_main(["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(nets), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc == 128 + signal.SIGTERM, err
    lines = err.splitlines()
    stop = next(i for i, line in enumerate(lines) if line.startswith("bafusion fuse-dir: terminated; rerun it with "))
    said = [line for line in lines[:stop] if line.startswith("bafusion fuse-dir: skipped ")]
    assert len(said) == 2 and any("a-B.png: size" in line for line in said), err
    assert any("lone-A.png" in line and "only 1 shot" in line for line in said), err
    assert (tmp_path / "out" / "b.png").is_file() and not (tmp_path / "out" / "c.png").exists()


def test_fuse_names_its_steps_on_a_terminal_and_not_with_no_progress(tmp_path: Path, nets: Path, capsys,
                                                                     monkeypatch) -> None:
    """A camera-size fuse spent most of its minute outside the fusion's bar (reading, the scene
    check, exposure matching, writing), silently: on a terminal each step is named on stderr
    (exposure matching as a bar, like the fusion's); --no-progress and a log file get none of it,
    and the closing line stays."""
    import bafusion.progress as progress
    from bafusion.fusion import working

    pa, pb = tmp_path / "a.png", tmp_path / "b.png"
    for path, x in zip((pa, pb), pair(3)):
        Image.fromarray(x).save(path)
    monkeypatch.setattr(working, "PROGRESS_MIN_PIXELS", 1)  # every pair is "camera size"
    steps = ["bafusion fuse: reading " + f"{pa}, {pb} ...", "bafusion fuse: checking that the shots show one scene ...",
             "bafusion fuse: checking whether the shots move ...", "bafusion fuse: loading the nets ...",
             "matching exposure", "bafusion fuse: fusing 2 images ..."]
    for terminal, extra in ((True, []), (True, ["--no-progress"]), (False, [])):
        monkeypatch.setattr(progress, "stderr_is_terminal", lambda: terminal)
        out = tmp_path / f"f{terminal}{len(extra)}.png"
        rc = cli_main(["fuse", str(pa), str(pb), "-o", str(out), "--model", str(nets), "--device", "cpu", *extra])
        cap = capsys.readouterr()
        assert rc == 0 and cap.out.startswith(f"fused 2 images into {out} ("), cap.out
        named = [s for s in [*steps, f"bafusion fuse: writing {out} ..."] if s in cap.err]
        if terminal and not extra:
            assert len(named) == len(steps) + 1, cap.err
            assert cap.err.index("reading") < cap.err.index("matching exposure") < cap.err.index("writing")
        else:
            assert named == [] and "bafusion fuse:" not in cap.err and "step/s" not in cap.err, cap.err
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    rc = cli_main(["fuse", str(pa), str(pb), "-o", str(tmp_path / "g.png"), "--model", str(nets), "--device", "cpu",
                   "--align", "translation"])
    err = capsys.readouterr().err
    assert rc == 0 and "bafusion fuse: aligning the shots (translation) ..." in err
    # and the alignment's own steps (a camera-size pair aligns for minutes)
    assert "bafusion fuse: aligning: shot 2 of 2: estimating its motion (translation) ..." in err, err


def test_a_pairs_steps_are_named_by_the_camera_size_threshold_as_it_is_at_the_call(nets: Path, monkeypatch) -> None:
    """The fusion's step lines ("matching the exposures ...") are said for pairs of
    working.PROGRESS_MIN_PIXELS or more as that constant is when the pair is fused. rule.py held
    a copy of it, taken when it was first imported (bafusion.fusion imports its modules lazily):
    a test that lowered the constant and then ran the first fusion of the process
    (``test_fuse_names_its_steps_on_a_terminal_and_not_with_no_progress``) left the copy at 1, and
    every later fuse-dir in that process named the steps of its 80x80 pairs
    (``pytest tests/test_batch.py -k steps``: both ``names_the_steps`` tests failed; alone or in
    the whole suite, where an earlier test had imported rule, they passed)."""
    from bafusion.fusion import fuse_stack, load_nets_from_dir, working

    a, b = pair(3)
    loaded = load_nets_from_dir(nets, "cpu")
    params = {"exposure_match": "linear"}

    def said() -> list[str]:
        lines: list[str] = []
        fuse_stack([a, b], loaded, params, ("a", "b"), progress=False, step=lines.append)
        return lines

    assert working.PROGRESS_MIN_PIXELS > N * N and said() == []  # a small pair: no step lines
    monkeypatch.setattr(working, "PROGRESS_MIN_PIXELS", N * N)  # the pair counts as camera size
    assert said()[:1] == ["matching the exposures"]
    monkeypatch.undo()
    assert said() == []  # and no longer, once the constant is back


def test_fuse_dir_names_the_steps_of_each_stack_on_a_terminal_as_fuse_does(tmp_path: Path, nets: Path, capsys,
                                                                             monkeypatch) -> None:
    """fuse-dir named none of a stack's steps before and after its fusion: a camera-size pair
    with --align sat 93 s behind a frozen bar, and its write 15-30 s more. On a terminal it
    names reading, aligning (and the alignment's own steps) and writing, as fuse does (in a log:
    the next test)."""
    import bafusion.progress as progress

    src = _pairs_in(tmp_path / "in", {"p": 3})
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    monkeypatch.setattr(batch, "STEP_LINES_MIN_PIXELS", 1)  # every stack is "camera size"
    out = tmp_path / "out"
    assert cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu",
                     "--align", "similarity"]) == 0
    err = capsys.readouterr().err
    steps = [f"bafusion fuse-dir: p: reading {src / 'p-A.png'}, {src / 'p-B.png'} ...",
             "bafusion fuse-dir: p: aligning the shots (similarity) ...",
             "bafusion fuse-dir: p: aligning: shot 2 of 2: estimating its motion (similarity) ...",
             "bafusion fuse-dir: p: aligning: shot 2 of 2: judging the match ...",
             f"bafusion fuse-dir: p: writing {out / 'p.png'} ..."]
    at = [err.find(s) for s in steps]
    assert -1 not in at and at == sorted(at), err
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out2"), "--model", str(nets), "--device", "cpu"]) == 0
    assert "bafusion fuse-dir: p: checking that the shots show one scene ..." in capsys.readouterr().err


def test_fuse_dir_in_a_log_names_a_camera_size_stacks_reading_and_aligning_with_the_time(
        tmp_path: Path, nets: Path, capsys, monkeypatch) -> None:
    """In a log (``fuse-dir IN OUT --align auto 2> log``) a camera-size stack's reading, scene check
    and alignment said nothing: a 24 MP pair's log stood still for minutes between its
    stack's line and its fusion's step lines (the steps around the fusion were named on a
    terminal only). Where its shots hold STEP_LINES_MIN_PIXELS or more (here lowered to the test's
    pair) each of those steps is now a plain line after the local time, as ``fuse`` prints them
    in a log; a smaller stack keeps its one line per stack, and --no-progress prints none."""
    import re

    import bafusion.progress as progress

    stamp = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d "
    src = _pairs_in(tmp_path / "in", {"p": 3})
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)  # a log
    args = ["--model", str(nets), "--device", "cpu", "--align", "similarity"]
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "small"), *args]) == 0
    err = capsys.readouterr().err
    assert "bafusion fuse-dir: 1/1 p: fused in " in err and " ...\n" not in err, err  # small: one line
    monkeypatch.setattr(batch, "STEP_LINES_MIN_PIXELS", 2 * N * N)  # the pair counts as camera-size
    out = tmp_path / "out"
    assert cli_main(["fuse-dir", str(src), str(out), *args]) == 0
    lines = capsys.readouterr().err.splitlines()
    steps = [re.escape(f"reading {src / 'p-A.png'}, {src / 'p-B.png'}"), re.escape("aligning the shots (similarity)"),
             re.escape("aligning: shot 2 of 2: estimating its motion (similarity)") + ".*",
             re.escape("aligning: shot 2 of 2: judging the match"), re.escape(f"writing {out / 'p.png'}")]
    at = []
    for step in steps:
        found = [i for i, line in enumerate(lines)
                 if re.fullmatch(rf"{stamp}bafusion fuse-dir: p: {step} \.\.\.", line)]
        assert found, (step, lines)
        at.append(found[0])
    assert at == sorted(at), lines
    assert [x for x in lines if re.fullmatch(rf"{stamp}bafusion fuse-dir: 1/1 p: fused in .*", x)], lines
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "quiet"), *args, "--no-progress"]) == 0
    assert " ...\n" not in capsys.readouterr().err


def test_fuse_dir_names_the_steps_around_a_fusion_only_for_stacks_of_some_size(tmp_path: Path, nets: Path, capsys,
                                                                                monkeypatch) -> None:
    """On a terminal every stack named its steps around the fusion, small or not: three lines per
    stack (reading, checking the scene, checking the motion; eight with --align), a batch of
    hundreds of small stacks a screenful each second. Only a stack whose shots hold
    batch.STEP_LINES_MIN_PIXELS or more in all names them; the bar over the stacks and the steps of
    a stack of three or more shots stay. With --align a small stack still names its alignment,
    in one line: it spends 5-10 s there, and the bar alone did not say why it stood still."""
    import bafusion.progress as progress

    src = _pairs_in(tmp_path / "in", {"p": 3, "q": 4})
    frames = [*pair(5), pair(5)[0]]  # a stack of three shots of 80x80 px
    (src / "s").mkdir()
    for i, x in enumerate(frames):
        Image.fromarray(x).save(src / "s" / f"f{i}.png")
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    for align in ([], ["--align", "similarity"]):
        out = tmp_path / f"out{len(align)}"
        assert batch.STEP_LINES_MIN_PIXELS > 3 * N * N
        assert cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", *align]) == 0
        err = capsys.readouterr().err
        assert "fuse-dir: 100%" in err and "| 3/3 [" in err, err  # the bar over the stacks
        lines = [line for line in err.splitlines() if line.endswith(" ...")]
        aligning = [f"bafusion fuse-dir: {s}: aligning the shots (similarity) ..." for s in ("p", "q", "s")]
        assert [line for line in lines if ": step " not in line] == (aligning if align else []), err
        assert [line.split(": step ")[1] for line in lines if ": step " in line] == ["1/2: fusing f1.png into f0.png ...",
                                                                "2/2: fusing f2.png into the fusion of f0.png and "
                                                                "f1.png ..."], err
    # at the threshold a pair names them (two 80x80 shots), just above it not
    for least, named in ((2 * N * N, True), (2 * N * N + 1, False)):
        monkeypatch.setattr(batch, "STEP_LINES_MIN_PIXELS", least)
        out = tmp_path / f"at{least}"
        assert cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu"]) == 0
        err = capsys.readouterr().err
        assert (f"bafusion fuse-dir: p: writing {out / 'p.png'} ..." in err) is named, err
        assert (f"bafusion fuse-dir: s: writing {out / 's.png'} ..." in err), err  # three shots: over it


def test_fuse_dir_quiet_silences_every_bar_and_a_large_pair_is_refused_by_name(
    tmp_path: Path, nets: Path, capsys, monkeypatch
) -> None:
    """--quiet / --no-progress also silence each stack's own fusion bar (camera-size shots on a
    terminal); a file over Pillow's decompression-bomb limit is skipped with its name, the batch
    goes on."""
    import bafusion.progress as progress
    from bafusion.fusion import working

    src = tmp_path / "in"
    src.mkdir()
    for name, seed in (("p", 3), ("q", 4)):
        for n, x in zip("AB", pair(seed)):
            Image.fromarray(x).save(src / f"{name}-{n}.png")
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    monkeypatch.setattr(working, "PROGRESS_MIN_PIXELS", 1)  # every pair is "camera size"
    for flag in ("--quiet", "--no-progress"):
        rc = cli_main(["fuse-dir", str(src), str(tmp_path / f"out{flag}"), "--model", str(nets), "--device", "cpu", flag])
        err = capsys.readouterr().err
        assert rc == 0 and "fusing" not in err and "step/s" not in err and "fuse-dir:" not in err, err
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out-bars"), "--model", str(nets), "--device", "cpu"]) == 0
    assert "fusing" in capsys.readouterr().err  # each stack's bar, on a terminal without --quiet

    big = np.tile(pair(5)[0], (2, 2, 1))  # 160x160: over the limit set below, unlike the 80x80 pairs
    Image.fromarray(big).save(src / "big-A.png")
    Image.fromarray(big).save(src / "big-B.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 80 * 80 // 2 + 1)  # Pillow refuses over twice this
    rc = cli_main(["fuse-dir", str(src), str(tmp_path / "out-big"), "--model", str(nets), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == batch.EXIT_SKIPPED, err
    assert "big-A.png: image too large to read" in err and "Traceback" not in err
    assert sorted(p.name for p in (tmp_path / "out-big").iterdir()) == [batch.OUTPUT_MARKER, "p.png", "q.png"]


def test_fuse_dir_goes_on_when_one_output_cannot_be_written(tmp_path: Path, nets: Path, capsys) -> None:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name, seed in (("p", 3), ("q", 4)):
        for n, x in zip("AB", pair(seed)):
            Image.fromarray(x).save(src / f"{name}-{n}.png")
    (out / "p.png").mkdir(parents=True)  # a folder where p's output goes: the rename fails
    (out / "p.png" / "keep").write_text("x")
    rc = cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"])
    o, err = capsys.readouterr()
    assert rc == batch.EXIT_SKIPPED, err
    assert "cannot write" in err and "p.png" in err and "Traceback" not in err
    assert (out / "q.png").is_file() and (out / "p.png" / "keep").read_text() == "x"
    assert not [p for p in out.iterdir() if p.name not in ("p.png", "q.png", batch.OUTPUT_MARKER)]  # no temporary left


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("kind", ["gray8", "gray16", "rgb8", "rgb16"])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_every_tiff_orientation_is_applied(tmp_path: Path, orientation: int, kind: str, compression) -> None:
    """Uncompressed gray TIFFs with orientation 5-8 came out garbled (Pillow memory-maps them
    when opened by name, then turns the map); every layout is turned as EXIF says."""
    from bafusion.io import _orient, read_image

    g = pair(1, colour=False)[0][:, :60]
    x = np.stack([g, g[::-1], 255 - g], axis=2) if kind.startswith("rgb") else g
    if kind.endswith("16"):
        x = x.astype(np.uint16) * 257
    p = tmp_path / "a.tif"
    tifffile.imwrite(p, x, photometric="rgb" if kind.startswith("rgb") else "minisblack", compression=compression,
                     extratags=[(274, "H", 1, orientation, True)])
    want = _orient(x, orientation)
    got = read_image(p)
    assert got.shape == want.shape[:2] + ((3,) if kind.startswith("rgb") else ())
    assert np.array_equal(got, want if kind.endswith("8") else (want // 257).astype(np.uint8))


def test_fuse_dir_lists_broken_links_and_does_not_fuse_their_stacks(tmp_path: Path, nets: Path, capsys) -> None:
    """A broken symbolic link (a shot on a card not mounted) was left out silently: a pair with
    one was dropped unsaid, a stack folder with one was fused without that shot, exit 0. Now each
    is listed with its target, its stack is not fused, and the status is 3."""
    src = tmp_path / "in"
    (src / "s").mkdir(parents=True)
    a, b = pair(5)
    Image.fromarray(a).save(src / "p-A.png")
    Image.fromarray(b).save(src / "p-B.png")
    Image.fromarray(b).save(src / "q-B.png")
    (src / "q-A.jpg").symlink_to(tmp_path / "card" / "q-A.jpg")
    Image.fromarray(a).save(src / "s" / "1.png")
    Image.fromarray(b).save(src / "s" / "2.png")
    (src / "s" / "3.jpg").symlink_to(tmp_path / "card" / "3.jpg")
    (src / "t").symlink_to(tmp_path / "card" / "t")
    out = tmp_path / "out"
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == batch.EXIT_SKIPPED
    o, err = capsys.readouterr()
    assert "fused 1 stack(s)" in o, o
    for link in (src / "q-A.jpg", src / "s" / "3.jpg", src / "t"):
        assert f"skipped {link}: broken link (to {tmp_path / 'card' / link.name})" in err, err
    assert sorted(p.name for p in out.iterdir()) == [batch.OUTPUT_MARKER, "p.png"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_fuse_dir_lists_named_pipes_and_does_not_fuse_their_stacks(tmp_path: Path, nets: Path, capsys) -> None:
    """A named pipe named like a shot was passed over without a word: a pair with one was
    "stack 'q' has only 1 shot(s)", naming the other shot; a stack folder with one was fused
    without it, exit 0. Each is now named "not a regular file", as fuse names it, and its stack
    is not fused (status 3); the pipe is never opened (it would hang, waiting for a writer)."""
    src = tmp_path / "in"
    (src / "s").mkdir(parents=True)
    a, b = pair(5)
    Image.fromarray(a).save(src / "p-A.png")
    Image.fromarray(b).save(src / "p-B.png")
    Image.fromarray(b).save(src / "q-B.png")
    os.mkfifo(src / "q-A.png")
    Image.fromarray(a).save(src / "s" / "1.png")
    Image.fromarray(b).save(src / "s" / "2.png")
    os.mkfifo(src / "s" / "3.png")
    out = tmp_path / "out"
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == batch.EXIT_SKIPPED
    o, err = capsys.readouterr()
    assert "fused 1 stack(s)" in o, o
    for fifo, stack in ((src / "q-A.png", "q"), (src / "s" / "3.png", "s")):
        assert (f"skipped {fifo}: not a regular file (a named pipe, a device or a socket): stack {stack!r} not fused"
                in err), err
    assert sorted(p.name for p in out.iterdir()) == [batch.OUTPUT_MARKER, "p.png"]


def test_fuse_decodes_each_source_png_once(tmp_path: Path, nets: Path, pillow_decodes: dict[str, int]) -> None:
    """A PNG's header was read by Pillow's getexif(), which decodes the whole image when no
    eXIf chunk precedes the pixel data: fuse of two PNGs decoded each 5 times (3 before the
    size check), now once (the read)."""
    a, b = pair(1)
    Image.fromarray(a).save(tmp_path / "a.png")
    Image.fromarray(b).save(tmp_path / "b.png")
    counts = pillow_decodes
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.png"),
                     "--model", str(nets), "--device", "cpu"]) == 0
    assert counts == {"a.png": 1, "b.png": 1}, counts


def test_fuse_dir_size_error_says_an_exif_orientation_was_applied(tmp_path: Path, nets: Path, capsys) -> None:
    """``fuse`` and ``metrics`` say where an EXIF orientation swapped a file's width and height;
    fuse-dir's skipped stack said only "size 60x80 (WxH) differs from 80x60"."""
    src = tmp_path / "in"
    src.mkdir()
    a, b = pair(1)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(a[:60]).save(src / "p-A.jpg", exif=exif.tobytes())  # stored 80x60, read 60x80
    Image.fromarray(b[:60]).save(src / "p-B.jpg")
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(nets), "--device", "cpu",
                     "--quiet"]) == batch.EXIT_NONE_FUSED
    err = capsys.readouterr().err
    line = next(x for x in err.splitlines() if "skipped" in x)
    assert "p-B.jpg: size 80x60 (WxH) differs from 60x80 of" in line, err
    assert f"{src / 'p-A.jpg'}'s EXIF orientation 6 was applied (the file stores 80x60)" in line, err


@pytest.mark.parametrize("damage", ["[" * 200 + "]" * 200, "{\"bafusion\": ", "\udcff"])
def test_fuse_dir_refuses_a_damaged_record_naming_it(tmp_path: Path, nets: Path, capsys, damage: str) -> None:
    """A record nested too deeply to read (more than MAX_JSON_DEPTH levels), or no JSON at all,
    counted as no record, silently: fuse-dir OTHER OUT replaced it with its own, which forgot
    the outputs of IN it vouched for (a rerun of IN was then refused: "does not show it fused
    from"). Refused now, naming the file; the record left as it is."""
    src, other, out = tmp_path / "in", tmp_path / "other", tmp_path / "out"
    for folder, name, seed in ((src, "p1", 3), (other, "q1", 4)):
        folder.mkdir()
        for n, x in zip("AB", pair(seed)):
            Image.fromarray(x).save(folder / f"{name}-{n}.png")
    argv = ["--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(["fuse-dir", str(src), str(out), *argv]) == 0
    capsys.readouterr()
    marker = out / batch.OUTPUT_MARKER
    marker.write_bytes(damage.encode("utf-8", "surrogateescape"))
    before = marker.read_bytes()
    assert cli_main(["fuse-dir", str(other), str(out), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"bafusion fuse-dir: error: {marker}: fuse-dir's record is unreadable ("), err
    assert ("nested too deeply" in err[0]) == damage.startswith("[["), err
    assert marker.read_bytes() == before and not (out / "q1.png").exists()
    marker.write_text("")  # an earlier version's empty record: none, as before
    assert batch.read_marker(out) is None


def test_fuse_dir_skip_existing_keeps_only_outputs_of_the_same_setup(tmp_path: Path, nets: Path, capsys) -> None:
    """--skip-existing kept any output that existed: after a change of model or parameters
    (or an upgrade) a batch held the results of two setups, silently, exit 0. The marker now
    records the setup (the nets' sha256, the parameters, --align, --ext, the version) and the
    outputs written with it; --skip-existing into a folder of another setup, or of an unknown
    one (an earlier version's empty marker, no marker), is refused before any work."""
    import json
    import shutil

    import torch

    from bafusion import __version__
    from bafusion.nets.model import build_model, save_model

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name, seed in (("p1", 3), ("p2", 4)):
        for n, x in zip("AB", pair(seed)):
            Image.fromarray(x).save(src / f"{name}-{n}.png")
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main([*argv, "--l", "8"]) == 0
    capsys.readouterr()
    marker = out / batch.OUTPUT_MARKER
    doc = json.loads(marker.read_text())
    assert doc["bafusion"] == __version__ and doc["ext"] == "png" and doc["align"] == "none"
    assert doc["params"]["l"] == 8 and doc["outputs"] == ["p1.png", "p2.png"]
    assert doc["model"]["initial"]["sha256"] == batch._file_sha256(nets / "initial.pt")
    assert doc["model"]["boundary"]["sha256"] == batch._file_sha256(nets / "boundary.pt")
    assert not list(out.glob("*.part")) and not list(out.glob(".*.part-*"))
    (out / "p2.png").unlink()
    kept = (out / "p1.png").stat().st_mtime_ns

    def refused(*extra: str, advice: str = "drop --skip-existing") -> str:
        rc = cli_main([*argv, "--skip-existing", *extra])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert str(out) in err and advice in err, err
        assert not (out / "p2.png").exists() and (out / "p1.png").stat().st_mtime_ns == kept  # no work done
        return err

    assert "other parameters (l: 8 -> 6)" in refused("--l", "6")
    # memory settings (what the out-of-memory message advises) are no other setup
    assert batch.setup_differences(doc, {**doc, "params": {**doc["params"], "batch_size": 64, "max_tile": 256}}) == []
    assert "refine: True -> False" in refused("--l", "8", "--no-refine")
    assert "another --align (none -> translation)" in refused("--align", "translation")
    assert "another --ext (png -> tif)" in refused("--ext", "tif")
    other = tmp_path / "other-nets"  # another initial net; the boundary net the same file
    other.mkdir()
    shutil.copy(nets / "boundary.pt", other / "boundary.pt")
    shutil.copy(nets / "boundary.json", other / "boundary.json")
    torch.manual_seed(1)
    save_model(build_model(8), other / "initial.pt", {"patch": 12})
    err = refused("--model", str(other))
    assert "another model" in err and "initial sha256" in err and "boundary sha256" not in err
    doc["bafusion"] = "0.0.1"  # an upgrade
    marker.write_text(json.dumps(doc))
    assert "another bafusion version (0.0.1 -> " in refused()
    marker.write_text("")  # an earlier version's empty marker
    assert "its marker records no model or parameters" in refused(advice="move them away")
    marker.unlink()  # an earlier version wrote none outside IN
    assert "no .bafusion-fuse-dir records the model" in refused(advice="move them away")

    # the same setup (the same nets in another folder too): p1 kept, p2 fused, exit 0
    doc["bafusion"] = __version__
    marker.write_text(json.dumps(doc))
    shutil.copytree(nets, tmp_path / "copy")
    assert cli_main([*argv, "--skip-existing", "--model", str(tmp_path / "copy")]) == 0
    o = capsys.readouterr().out
    assert "fused 1 stack(s)" in o and "1 already there" in o
    assert (out / "p1.png").stat().st_mtime_ns == kept and (out / "p2.png").is_file()
    # without --skip-existing: replaced, the record rewritten with the new setup
    assert cli_main([*argv, "--l", "6"]) == 0
    doc = json.loads(marker.read_text())
    assert doc["params"]["l"] == 6 and doc["outputs"] == ["p1.png", "p2.png"]
    # an output the record does not list (a run of another setup stopped before replacing
    # it) is fused again, not kept
    doc["outputs"] = ["p2.png"]
    marker.write_text(json.dumps(doc))
    before = (out / "p1.png").stat().st_mtime_ns
    assert cli_main([*argv, "--l", "6", "--skip-existing"]) == 0
    assert "fused 1 stack(s) into" in capsys.readouterr().out
    assert (out / "p1.png").stat().st_mtime_ns != before
    assert json.loads(marker.read_text())["outputs"] == ["p1.png", "p2.png"]


def test_fuse_dir_skip_existing_does_not_keep_outputs_of_other_fusion_code(tmp_path: Path, nets: Path,
                                                                           capsys) -> None:
    """The record's guard against other code was ``bafusion``'s version, which stayed 0.1.0
    across fixes that change outputs: after an upgrade --skip-existing kept the outputs the old,
    buggy code made as "made by this setup", exit 0. The record now holds a digest of the
    fusion sources (``code``); one of other code, or without it (an earlier version's), is
    refused as another setup is, saying that the fusion code changed; without --skip-existing
    they are fused again, as the message says."""
    import json

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name, seed in (("p1", 3), ("p2", 4)):
        for n, x in zip("AB", pair(seed)):
            Image.fromarray(x).save(src / f"{name}-{n}.png")
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == 0
    capsys.readouterr()
    marker = out / batch.OUTPUT_MARKER
    doc = json.loads(marker.read_text())
    assert doc["code"] == batch.fusion_code_digest() and len(doc["code"]) == 64
    (out / "p2.png").unlink()  # a batch stopped before its last stack
    kept = (out / "p1.png").stat().st_mtime_ns
    for code, said in (("0" * 64, "code digest 000000000000 -> " + doc["code"][:12]),
                       (None, "code digest (not recorded: an earlier version) -> ")):
        old = {**doc, "code": code} if code else {k: v for k, v in doc.items() if k != "code"}
        marker.write_text(json.dumps(old))
        rc = cli_main([*argv, "--skip-existing"])
        err = capsys.readouterr().err
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert "other fusion code (bafusion's fusion code changed since they were made by bafusion " in err, err
        assert said in err and "drop --skip-existing (they are then fused again)" in err, err
        assert (out / "p1.png").stat().st_mtime_ns == kept and not (out / "p2.png").exists()
    # the advice: without --skip-existing both are fused again, the record names this code
    assert cli_main(argv) == 0
    assert "fused 2 stack(s)" in capsys.readouterr().out
    assert (out / "p1.png").stat().st_mtime_ns != kept and (out / "p2.png").is_file()
    assert json.loads(marker.read_text())["code"] == doc["code"]


def test_fusion_code_digest_changes_with_the_fusion_sources(tmp_path: Path, monkeypatch) -> None:
    """:func:`batch.fusion_code_digest` hashes the code fusion runs: a code edit of one of its
    modules (here a copy of the package with a statement more in each in turn) changes it."""
    import shutil

    pkg = Path(batch.__file__).resolve().parents[1]
    copy = tmp_path / "bafusion"
    for sub in ("fusion", "io", "nets", "data"):
        shutil.copytree(pkg / sub, copy / sub, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    monkeypatch.setattr(batch, "__file__", str(copy / "fusion" / "batch.py"))
    seen = [batch.fusion_code_digest()]
    assert seen[0] == batch.fusion_code_digest()
    for edited in ("fusion/rule.py", "io/read.py", "nets/model.py", "data/composite.py"):
        with open(copy / edited, "a") as f:
            f.write("\n_x = 1\n")
        seen.append(batch.fusion_code_digest())
    assert len(set(seen)) == len(seen), seen


def test_fusion_code_digest_ignores_docstrings_comments_and_formatting(tmp_path: Path) -> None:
    """The digest hashed the sources' text, so a docstring's or a comment's rewording in an
    upgrade had --skip-existing refuse a whole batch as "other fusion code". It now hashes each
    module's code (its syntax tree without docstrings): docstrings, comments and formatting
    leave it as it was; a code edit, a message's wording included, changes it."""
    import shutil

    pkg = Path(batch.__file__).resolve().parents[1]
    copy = tmp_path / "bafusion"
    for sub in ("fusion", "io", "nets", "data"):
        shutil.copytree(pkg / sub, copy / sub, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    before = batch.fusion_code_digest(copy)

    def edit(path: Path, node: ast.AST, words: str, *, extra: str = "") -> None:
        """Insert ``words`` at the start of the string ``node`` (after its opening quotes)."""
        lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
        line = lines[node.lineno - 1]
        at = node.col_offset + (3 if line[node.col_offset:].startswith(('"""', "'''")) else 1)
        lines[node.lineno - 1] = line[:at] + words + line[at:]
        path.write_text("".join(lines) + extra, encoding="utf-8")
        ast.parse(path.read_bytes())  # still Python

    def strings(path: Path, docstrings: bool) -> list[ast.Constant]:
        tree = ast.parse(path.read_bytes())
        docs = [n.body[0].value for n in ast.walk(tree)
                if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and ast.get_docstring(n, clean=False)]
        if docstrings:
            return docs
        text = path.read_text(encoding="utf-8")
        parts = {id(c) for j in ast.walk(tree) if isinstance(j, ast.JoinedStr) for c in ast.walk(j)}
        return [n for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value
                and n not in docs and id(n) not in parts and (ast.get_source_segment(text, n) or "x")[0] in "\"'"]

    rule, model, read = copy / "fusion" / "rule.py", copy / "nets" / "model.py", copy / "io" / "read.py"
    edit(rule, strings(rule, True)[0], "Reworded. ")  # the module's docstring
    edit(model, strings(model, True)[-1], "Reworded too. ",  # a function's or class's, a comment, blank lines
         extra="\n\n# a comment\n\n")
    read.write_text(read.read_text(encoding="utf-8").replace("\nimport ", "  # said\r\nimport ", 1), encoding="utf-8")
    assert batch.fusion_code_digest(copy) == before
    edit(read, strings(read, False)[0], "x")  # a string the code uses (a message) is code
    assert batch.fusion_code_digest(copy) != before


def test_fusion_code_digest_ignores_line_endings_hidden_and_unreadable_files(tmp_path: Path) -> None:
    """The same code checked out with CRLF line endings (Git for Windows' default), or with an
    editor's hidden lock file (``.#rule.py``, a dangling link) or an unreadable entry beside
    it, hashes the same, so ``--skip-existing`` does not refuse a batch of the same code."""
    import shutil

    pkg = Path(batch.__file__).resolve().parents[1]
    copy = tmp_path / "bafusion"
    for sub in ("fusion", "io", "nets", "data"):
        shutil.copytree(pkg / sub, copy / sub, ignore=shutil.ignore_patterns("__pycache__", "*.json"))
    before = batch.fusion_code_digest(copy)
    assert before == batch.fusion_code_digest(pkg)
    for f in [*copy.glob("fusion/*.py"), *copy.glob("io/*.py")]:
        f.write_bytes(f.read_bytes().replace(b"\n", b"\r\n"))
    (copy / "fusion" / ".#rule.py").symlink_to(copy / "nowhere")
    (copy / "io" / "broken.py").symlink_to(copy / "nowhere")  # cannot be read
    assert batch.fusion_code_digest(copy) == before
    (copy / "io" / "read.py").write_bytes((copy / "io" / "read.py").read_bytes() + b"x = 1\r\n")
    assert batch.fusion_code_digest(copy) != before


#: A fixed source using what changed in Python's syntax trees from 3.11 on (f-strings, nested
#: ones and their format specs, type hints, match statements, except*, positional-only
#: parameters, walrus, async). Its code's digest below was computed on 3.11; 3.12.1 and 3.13.0
#: give the same.
CODE_SAMPLE = r'''"""Module docstring."""
from __future__ import annotations
import os as _os
from typing import Generic, TypeVar

T = TypeVar("T")


class Box(Generic[T]):
    """Class docstring."""
    items: list[T] = []

    def __init__(self, value: T, *, width: int = 8, **kw: object) -> None:
        """Method docstring."""
        self.value = value
        self.width = width

    async def get(self, /, n: int | None = None) -> T:
        async with self.lock() as _l:
            async for _ in self.stream():
                await self.wait()
        return self.value


def describe(x: float, name: str = "x", spec: str = ">10") -> str:
    w = 3
    a = f"{name}={x:.{w}f} ({x!r:>{w}}) {{literal}} {x=} {x = !s:^12}"
    b = f"{'nested ' + f'{x:{spec}}'} {x:} {x!a}"
    c = f"plain" f"{x}" "tail" r"raw\d" u"u" + rb"b".decode()
    d = f"""multi
{x
 + 1:08.3f}
line {name!r}"""
    e = f"{x:{'>' if x else '<'}{w}}"
    g = f"{[y for y in range(3)]}{ {1: 2}[1] }{(lambda: 1)}"[:-1]
    h = f"" + f"{x!r:}" + f"{{}}" + f"{x:{w}}" + f"{x:>{w}.{w}}" + f"{x:%Y-%m {w} }" + f"{x:{w}{w}}z"
    return a + b + c + d + e + g + h


def matcher(cmd):
    match cmd:
        case {"op": "fuse", "args": [first, *rest]} if rest:
            return first
        case ["go", ("n" | "s") as d]:
            return d
        case Box(value=0 | 1.5 | -2j | None | True):
            return None
        case str() | bytes():
            return cmd
        case _os.sep:
            return "sep"
        case [*_]:
            return list(cmd)
        case _:
            raise ValueError(f"unknown {cmd!r}") from None


@staticmethod
def deco(*args, **kwargs):
    global T
    try:
        yield from (i ** 2 for i in args if i)
    except* ValueError as eg:
        del eg
    finally:
        pass
    lambda a, /, b=1, *c, d, e=2, **f: (a, b, c, d, e, f)
    x = [*args, *kwargs]
    y = {**kwargs, "k": ...}
    z = {i for i in x} | set()
    (w := 1)
    v = x[1:2:3], x[::], x[...]
    assert v, "msg"
    while False:
        continue
    else:
        return not (1 < 2 <= 3 is not None in x)
'''
CODE_SAMPLE_DIGEST = "e5ff7c4b5d13fa52db992099f86edf06560fe2408a90d75d8e69a54fc15ce8a1"


def test_code_digest_is_the_same_on_each_python(monkeypatch) -> None:
    """The code digests (fuse-dir's record, a training checkpoint's) are meant to name the code
    whatever Python reads it: a source with f-strings, nested ones, type hints and a match
    statement keeps the digest 3.11 gives it (pinned, so a later Python's syntax trees that
    change it are caught), also read as Python 3.12.1 parses it: 3.12.1 ends a format spec
    that ends with a replacement field (``f"{x:>{w}}"``) with an empty string piece, which
    gave that code another digest there, so a batch fused on 3.11 was refused as another
    code's on 3.12."""
    import hashlib

    from bafusion import _version

    def digest() -> str:
        return hashlib.sha256(_version.code_of(CODE_SAMPLE.encode())).hexdigest()

    assert digest() == CODE_SAMPLE_DIGEST
    real_parse, added = ast.parse, []

    def parse_as_3_12_1(source, *args, **kwargs):
        tree = real_parse(source, *args, **kwargs)
        if source != CODE_SAMPLE.encode():  # (pytest's own parses)
            return tree
        for node in ast.walk(tree):
            spec = node.format_spec if isinstance(node, ast.FormattedValue) else None
            if isinstance(spec, ast.JoinedStr) and spec.values and isinstance(spec.values[-1], ast.FormattedValue):
                spec.values.append(ast.Constant(value=""))
                added.append(spec)
            elif (isinstance(spec, ast.JoinedStr) and len(spec.values) > 1  # parsed by 3.12.1 itself
                  and isinstance(spec.values[-2], ast.FormattedValue) and spec.values[-1].value == ""):
                added.append(spec)
        return tree

    monkeypatch.setattr(ast, "parse", parse_as_3_12_1)
    as_on_3_12_1 = digest()
    monkeypatch.undo()
    assert len(added) == 6  # the sample's format specs that end with a replacement field
    assert as_on_3_12_1 == CODE_SAMPLE_DIGEST


@pytest.mark.parametrize("marker", ["none", "empty"])
def test_fuse_dir_an_output_folder_without_a_record_is_refused_with_advice_that_works(
        tmp_path: Path, nets: Path, capsys, marker: str) -> None:
    """A batch of a version before the record (none, or an empty one), stopped before its last
    stack: --skip-existing refused it saying "drop --skip-existing (they are then fused
    again)", and the run without it was refused too ("move them away, or give another output
    folder"). Each refusal now gives advice that works: moving them away resumes the batch."""
    src = _pairs_in(tmp_path / "in", {"p1": 3, "p2": 4, "p3": 5})
    out = tmp_path / "out"
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    (out / "p3.png").unlink()  # the old batch was stopped before p3
    (out / batch.OUTPUT_MARKER).unlink()
    if marker == "empty":
        (out / batch.OUTPUT_MARKER).write_text("")
    for extra in (["--skip-existing"], []):
        assert cli_main([*argv, *extra]) == 2
        err = capsys.readouterr().err
        assert "move them away" in err and "give another output folder" in err, err
        assert "drop --skip-existing" not in err, err
    # the advice: move them away (here into a folder of their own), then resume
    keep = tmp_path / "old-outputs"
    keep.mkdir()
    for name in ("p1.png", "p2.png"):
        (out / name).rename(keep / name)
    assert cli_main([*argv, "--skip-existing"]) == 0, capsys.readouterr().err
    assert "fused 3 stack(s)" in capsys.readouterr().out
    assert sorted(p.name for p in out.glob("*.png")) == ["p1.png", "p2.png", "p3.png"]
    # or give another output folder
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "other"), *argv[3:], "--skip-existing"]) == 0


def _three_pairs(tmp_path: Path) -> tuple[Path, Path]:
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    for name, seed in (("p", 3), ("q", 4), ("r", 5)):
        for n, x in zip("AB", pair(seed)):
            Image.fromarray(x).save(src / f"{name}-{n}.png")
    return src, out


def _fail_at(monkeypatch: pytest.MonkeyPatch, stack: str, error: BaseException) -> None:
    """Make fuse-dir's ``fuse_files`` raise ``error`` for the stack ``stack`` (its shots
    ``<stack>-A.png``, ...) and fuse the others as before."""
    real = batch.fuse_files

    def failing(paths, *args, **kwargs):
        if paths[0].name.startswith(f"{stack}-"):
            raise error
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(batch, "fuse_files", failing)


@pytest.mark.parametrize("error", [
    MemoryError("Unable to allocate 275. MiB for an array with shape (3000, 4000, 3)"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you "
                 "tried to allocate 22127616 bytes. Error code 12 (Cannot allocate memory)"),
])
def test_fuse_dir_skips_a_stack_that_runs_out_of_memory_and_goes_on(tmp_path: Path, nets: Path, capsys,
                                                                    monkeypatch, error: Exception) -> None:
    """A MemoryError in one stack (a camera-size pair under a memory limit) stopped the whole
    batch (exit 1, nothing fused): it is skipped with its reason, the others are fused, exit 3."""
    src, out = _three_pairs(tmp_path)
    _fail_at(monkeypatch, "q", error)
    rc = cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"])
    o, err = capsys.readouterr()
    assert rc == batch.EXIT_SKIPPED, err
    assert f"skipped q: out of memory ({str(error)[:40]}" in err and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [batch.OUTPUT_MARKER, "p.png", "r.png"]
    assert batch.read_marker(out)["outputs"] == ["p.png", "r.png"]


def test_fuse_dir_frees_an_out_of_memory_stack_once_its_exception_is_gone(tmp_path: Path, nets: Path, capsys,
                                                                          monkeypatch) -> None:
    """The memory freed after a stack that ran out of memory was freed inside the ``except``,
    whose traceback still held the stack's arrays (gc could not free them): it runs after it."""
    import sys

    src, out = _three_pairs(tmp_path)
    handling: list[object] = []
    _fail_at(monkeypatch, "q", MemoryError("Unable to allocate 275. MiB"))
    monkeypatch.setattr(batch, "_free_memory", lambda: handling.append(sys.exc_info()[0]))
    rc = cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"])
    assert rc == batch.EXIT_SKIPPED, capsys.readouterr().err
    assert handling == [None]


def test_fuse_dir_stops_at_a_full_disk(tmp_path: Path, nets: Path, capsys, monkeypatch) -> None:
    """On a full disk every remaining stack was fused and failed at its write, one after the
    other: the batch stops at the first, says to free space and rerun with --skip-existing, and
    the record lists what was written."""
    import errno
    import os

    import bafusion.io as bio

    src, out = _three_pairs(tmp_path)
    real, tried = bio.write_image, []

    def full(path, *args, **kwargs):
        tried.append(Path(path).name)
        if Path(path).name == "q.png":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(bio, "write_image", full)
    rc = cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"])
    o, err = capsys.readouterr()
    assert rc == 2, err
    assert tried == ["p.png", "q.png"]  # r is not fused
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"bafusion fuse-dir: error: {out / 'q.png'}: No space left on device"), err
    assert "free space" in last and "--skip-existing" in last and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [batch.OUTPUT_MARKER, "p.png"]
    assert batch.read_marker(out)["outputs"] == ["p.png"]


@pytest.mark.parametrize("at", [2, 3])
def test_fuse_dir_stops_at_a_full_disk_when_writing_its_record(tmp_path: Path, nets: Path, capsys,
                                                              monkeypatch, at: int) -> None:
    """A full disk while fuse-dir rewrote its record after an output was only "cannot write
    fuse-dir's record", exit 2: no summary, the stacks skipped before unsaid, no advice, and the
    output just written was on disk but not in the record. It stops as at an output's full disk:
    the skip reasons, the summary, the advice; the output not in the record is removed. The
    record is also written before each output (``at`` 2: saying which shots it is fused from),
    where a full disk stops the batch alike, the output not written. The record's lines are
    appended to its journal (:data:`batch.JOURNAL_FILE`): the journal's header (1), q's
    "fusing" (2) and "fused" (3) lines; the line that failed is cut off again."""
    import errno
    import json
    import os

    from bafusion.errors import UserError

    src, out = _three_pairs(tmp_path)
    real_append, real_fuse, real_compact, calls = batch._append_line, batch.fuse_files, batch.compact_record, []

    def full_at_second(fd, data):
        calls.append(json.loads(data).get("op"))
        if len(calls) == at:  # before (2) or after (3) q's output: half the line written, then the disk is full
            os.write(fd, data[:len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_append(fd, data)

    def p_refused(paths, *args, **kwargs):
        if paths[0].name.startswith("p-"):
            raise UserError("p-A.png: not an image")
        return real_fuse(paths, *args, **kwargs)

    monkeypatch.setattr(batch, "_append_line", full_at_second)
    monkeypatch.setattr(batch, "fuse_files", p_refused)
    monkeypatch.setattr(batch, "compact_record", lambda out_: False)  # as a disk still full at the end
    rc = cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"])
    o, err = capsys.readouterr()
    assert rc == 2, err
    assert calls == [None, "fusing", "fused"][:at]  # r is not fused
    assert "skipped p: p-A.png: not an image" in err and "fused 0 stack(s) into" in o
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"bafusion fuse-dir: error: {out / batch.OUTPUT_MARKER}: No space left on device"), err
    assert "free space" in last and "--skip-existing" in last and "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == [batch.OUTPUT_MARKER, batch.JOURNAL_FILE]
    assert (out / batch.JOURNAL_FILE).read_bytes().endswith(b"\n")  # no torn line left for the next to follow
    assert batch.read_marker(out)["outputs"] == []
    assert ("q.png" in batch.read_marker(out)["sources"]) == (at == 3)  # "fusing" written before the output
    assert real_compact(out) and sorted(p.name for p in out.iterdir()) == [batch.OUTPUT_MARKER]
    assert batch.read_marker(out)["outputs"] == []


def test_fuse_dir_appends_to_its_record_per_stack_and_writes_it_whole_at_start_and_end(
        tmp_path: Path, nets: Path, monkeypatch) -> None:
    """fuse-dir rewrote its whole record (every output and its shots) twice per stack: a write
    took 16 ms at 200 outputs and 198 ms at 5000 (one run), a batch's with the square of its
    stacks. The record is written whole at the start (naming its journal) and at the end; in
    between one line per change is appended to :data:`batch.JOURNAL_FILE`, which
    :func:`batch.read_marker` reads with it: mid-batch it lists the outputs written so far."""
    import json

    src, out = _three_pairs(tmp_path)
    real_marker, real_fuse, writes, seen = batch.write_marker, batch.fuse_files, [], {}

    def counted(*args, **kwargs):
        writes.append(args[2])
        return real_marker(*args, **kwargs)

    def looking(paths, *args, **kwargs):
        if paths[0].name.startswith("r-"):  # p and q written: the record as a kill here leaves it
            seen["file"] = json.loads((out / batch.OUTPUT_MARKER).read_text())
            journal = out / ".bafusion-fuse-dir.journal"
            seen["journal"] = journal.read_text().splitlines() if journal.is_file() else []
            seen["read"] = batch.read_marker(out)
        return real_fuse(paths, *args, **kwargs)

    monkeypatch.setattr(batch, "write_marker", counted)
    monkeypatch.setattr(batch, "fuse_files", looking)
    assert cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]) == 0
    assert len(writes) == 2  # start and end, whatever the number of stacks (it was 1 + 2 per stack)
    assert seen["file"]["outputs"] == [] and isinstance(seen["file"]["journal"], str)
    lines = [json.loads(x) for x in seen["journal"]]
    assert lines[0] == {"journal": seen["file"]["journal"]}
    assert [(x["op"], x["name"]) for x in lines[1:]] == [("fusing", "p.png"), ("fused", "p.png"),
                                                          ("fusing", "q.png"), ("fused", "q.png")]
    assert seen["read"]["outputs"] == ["p.png", "q.png"]
    assert seen["read"]["sources"]["q.png"] == batch.shots_record(src, [src / "q-A.png", src / "q-B.png"])
    # the end: the record whole, no journal
    assert sorted(p.name for p in out.iterdir()) == [batch.OUTPUT_MARKER, "p.png", "q.png", "r.png"]
    doc = json.loads((out / batch.OUTPUT_MARKER).read_text())
    assert doc["outputs"] == ["p.png", "q.png", "r.png"] and "journal" not in doc
    assert sorted(doc["sources"]) == ["p.png", "q.png", "r.png"]


def test_a_killed_fuse_dirs_journal_is_read_up_to_its_torn_line_and_folded_in(tmp_path: Path, nets: Path, capsys,
                                                                            monkeypatch) -> None:
    """A run killed (SIGKILL) leaves its record and journal, maybe with a line half written: the
    outputs whose "fused" line is whole are kept by --skip-existing, the others fused again,
    and the next run folds the journal into the record. A journal the record does not name
    (left beside a record written since, by 0.7.0 say, which knows no journal) is not read."""
    import json

    src, out = _three_pairs(tmp_path)
    real_fuse = batch.fuse_files

    def killed_at_r(paths, *args, **kwargs):
        if paths[0].name.startswith("r-"):
            raise KeyboardInterrupt
        return real_fuse(paths, *args, **kwargs)

    real_compact = batch.compact_record
    monkeypatch.setattr(batch, "fuse_files", killed_at_r)
    monkeypatch.setattr(batch, "compact_record", lambda out_: False)  # killed: no end
    common = ["--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(["fuse-dir", str(src), str(out), *common]) == 130
    monkeypatch.setattr(batch, "fuse_files", real_fuse)
    monkeypatch.setattr(batch, "compact_record", real_compact)
    # q's "fused" line half written when the kill came (its output is complete)
    journal = (out / batch.JOURNAL_FILE).read_bytes()
    assert journal.endswith(b'{"op":"fused","name":"q.png"}\n')
    (out / batch.JOURNAL_FILE).write_bytes(journal[:-12])
    assert batch.read_marker(out)["outputs"] == ["p.png"]
    assert sorted(batch.read_marker(out)["sources"]) == ["p.png", "q.png"]  # fuse-dir's, to be replaced
    before = {n: (out / n).stat().st_mtime_ns for n in ("p.png", "q.png")}
    capsys.readouterr()
    assert cli_main(["fuse-dir", str(src), str(out), *common, "--skip-existing"]) == 0
    assert "fused 2 stack(s) into" in capsys.readouterr().out  # q and r; p kept
    assert (out / "p.png").stat().st_mtime_ns == before["p.png"] != 0
    assert sorted(p.name for p in out.iterdir()) == [batch.OUTPUT_MARKER, "p.png", "q.png", "r.png"]
    doc = json.loads((out / batch.OUTPUT_MARKER).read_text())
    assert doc["outputs"] == ["p.png", "q.png", "r.png"] and "journal" not in doc
    # a journal the record does not name: a record of 0.7.0's layout (no "journal"), another token
    (out / batch.JOURNAL_FILE).write_text('{"journal":"0123"}\n{"op":"fusing","name":"p.png","sources":{}}\n')
    assert batch.read_marker(out)["outputs"] == ["p.png", "q.png", "r.png"]
    doc["journal"] = "4567"
    (out / batch.OUTPUT_MARKER).write_text(json.dumps(doc, indent=1))
    assert batch.read_marker(out)["outputs"] == ["p.png", "q.png", "r.png"]
    doc["journal"] = "0123"  # named: read
    (out / batch.OUTPUT_MARKER).write_text(json.dumps(doc, indent=1))
    assert batch.read_marker(out)["outputs"] == ["q.png", "r.png"] and batch.read_marker(out)["sources"]["p.png"] == {}


def test_an_interrupted_fuse_dir_logs_its_counts_to_mlflow(tmp_path: Path, nets: Path, capsys, monkeypatch) -> None:
    """A fuse-dir stopped by Ctrl-C (or SIGTERM) ended its MLflow run KILLED with only its
    duration: no stacks_fused, though stacks were fused and listed in OUT's record. The counts
    of what it did before the stop are logged."""
    from mlflow.tracking import MlflowClient

    from bafusion import tracking

    src, out = _three_pairs(tmp_path)
    _fail_at(monkeypatch, "r", KeyboardInterrupt())
    assert cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]) == 130
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id],
                              f"tags.stage = 'fuse-dir' and tags.output = '{out}'")
    assert len(runs) == 1 and runs[0].info.status == "KILLED"
    assert {k: v for k, v in runs[0].data.metrics.items() if k.startswith("stacks_")} == {
        "stacks_fused": 2, "stacks_existing": 0, "stacks_skipped": 0}


def test_fuse_dirs_notes_of_a_stack_start_with_its_name(tmp_path: Path, tiny_nets: Path, capsys) -> None:
    """fuse-dir's lines about a stack's motion started with its name ("p: p-B.png: moves about
    2.3 px"), its exposure notes with the shot's path alone ("p-B.png differs from p-A.png by
    about -0.2 EV"): every note of a stack follows its name."""
    rng = np.random.default_rng(5)
    a8 = ndimage.uniform_filter(rng.integers(20, 160, (48, 40, 3)).astype(np.uint8), (3, 3, 1))
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(a8).save(src / "p-A.png")
    Image.fromarray(np.clip(np.round(a8 * 1.4), 0, 255).astype(np.uint8)).save(src / "p-B.png")
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(tiny_nets), "--device", "cpu",
                     "--min-region", "0"]) == 0
    lines = [x for x in capsys.readouterr().err.splitlines() if "differs from" in x]
    assert lines and all(x.startswith(f"bafusion fuse-dir: p: {src / 'p-B.png'} differs from") for x in lines), lines


def test_an_interrupted_fuse_dir_says_to_rerun_with_skip_existing(tmp_path: Path, nets: Path, capsys,
                                                                   monkeypatch) -> None:
    src, out = _three_pairs(tmp_path)
    _fail_at(monkeypatch, "q", KeyboardInterrupt())
    rc = cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 130
    assert last.startswith("bafusion fuse-dir: interrupted; rerun it with --skip-existing: the stacks fused into")
    assert batch.read_marker(out)["outputs"] == ["p.png"]


def test_fuse_dir_refuses_a_second_run_into_the_same_output_folder(tmp_path: Path, nets: Path, capsys,
                                                                   monkeypatch) -> None:
    """Two fuse-dir runs into one output folder (two terminals) each rewrote its record from
    their own list: the last one's record forgot the other's outputs (``--skip-existing`` then
    fused them again). A second run while one writes there is refused, naming the folder and
    the other process; the first one's record is whole."""
    import json
    import os

    src1, src2, out = tmp_path / "card1", tmp_path / "card2", tmp_path / "out"
    for src, names in ((src1, ("p1", "p2")), (src2, ("q1", "q2"))):
        src.mkdir()
        for k, name in enumerate(names):
            for n, x in zip("AB", pair(3 + k)):
                Image.fromarray(x).save(src / f"{name}-{n}.png")
    real = batch.fuse_files
    second: list[tuple[int, str]] = []

    def first_fuses(*args, **kwargs):
        if not second:  # the second terminal starts while the first fuses its first stack
            second.append((-1, ""))
            rc = cli_main(["fuse-dir", str(src2), str(out), "--model", str(nets), "--device", "cpu", "--quiet"])
            second[0] = (rc, capsys.readouterr().err)
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "fuse_files", first_fuses)
    assert cli_main(["fuse-dir", str(src1), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]) == 0
    rc, err = second[0]
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert str(out) in err and f"another bafusion fuse-dir (process {os.getpid()})" in err, err
    assert not (out / "q1.png").exists()
    assert json.loads((out / batch.OUTPUT_MARKER).read_text())["outputs"] == ["p1.png", "p2.png"]
    assert not (out / ".bafusion-fuse-dir.lock").exists()  # released and removed at the end
    # once the first has ended the second runs, and the record keeps both runs' outputs
    monkeypatch.setattr(batch, "fuse_files", real)
    assert cli_main(["fuse-dir", str(src2), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]) == 0
    assert json.loads((out / batch.OUTPUT_MARKER).read_text())["outputs"] == ["p1.png", "p2.png", "q1.png", "q2.png"]


def test_fuse_dir_with_align_registers_a_shot_of_another_size(tmp_path: Path, nets: Path, capsys) -> None:
    """A stack whose B was saved at twice the resolution was skipped under --align auto
    ("the sources must have the same size"); it is scaled onto A's frame and registered, and
    without --align the skip says how to fuse it."""
    from skimage.transform import resize

    src = tmp_path / "in"
    src.mkdir()
    a, b = pair(3)
    Image.fromarray(a).save(src / "p-A.png")
    big = (resize(b, (2 * N, 2 * N, 3), order=3, anti_aliasing=True) * 255).round().astype(np.uint8)
    Image.fromarray(big).save(src / "p-B.png")
    argv = ["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == batch.EXIT_NONE_FUSED
    line = next(x for x in capsys.readouterr().err.splitlines() if "skipped" in x)
    assert "use --align similarity (or auto) to register shots of different sizes" in line, line
    argv[2] = str(tmp_path / "out2")
    assert cli_main([*argv[:-1], "--align", "auto"]) == 0, capsys.readouterr().err  # the details: not --quiet
    err = capsys.readouterr().err
    assert f"{2 * N}x{2 * N} px, its frame lies at x " in err and f" of the first's {N}x{N}, " in err, err
    assert (tmp_path / "out2" / "p.png").is_file()


def test_a_chains_colour_note_names_the_files_of_the_fusion_it_compares_with(tmp_path: Path, tiny_nets: Path,
                                                                              capsys) -> None:
    """The chain's third shot was said to differ from 'fusion of 2 images' ('... of fusion of 2
    images's'), naming no file: it names the shots fused so far, without a broken possessive."""
    rng = np.random.default_rng(5)
    a8 = ndimage.uniform_filter(rng.integers(20, 160, (48, 40, 3)).astype(np.uint8), (3, 3, 1))
    tint = np.clip(np.round(a8 * np.array([1.12, 1.0, 0.7])), 0, 255).astype(np.uint8)
    for n, x in (("a", a8), ("b", a8), ("c", tint)):
        Image.fromarray(x).save(tmp_path / f"{n}.png")
    shots = [str(tmp_path / f"{x}.png") for x in "abc"]
    assert cli_main(["fuse", *shots, "-o", str(tmp_path / "f.png"), "--model", str(tiny_nets), "--device", "cpu",
                     "--no-progress", "--min-region", "0"]) == 0
    err = capsys.readouterr().err
    fusion = f"the fusion of {shots[0]} and {shots[1]}"
    assert f"{shots[2]} differs from {fusion} in colour balance" in err, err
    assert f"those of {fusion}): the output takes pixels" in err and f"the exposure and colour of {fusion}" in err, err
    assert "images's" not in err and "fusion of 2 images" not in err, err
    from bafusion.fusion.rule import fusion_name

    assert fusion_name(["a.png"]) == "a.png"
    assert fusion_name(["a", "b", "c"]) == "the fusion of a, b and c"
    assert fusion_name(list("abcde")) == "the fusion of the 5 shots a to e"


def test_output_exposure_matching_reaches_16_bit_outputs_and_joint_stacks(tmp_path: Path, tiny_nets: Path,
                                                                          capsys) -> None:
    """``--match-output-exposure`` applies B's gains to the full-depth pixels a 16-bit output
    is composed of and to every shot of the joint rule; without it each brighter shot gets a note."""
    rng = np.random.default_rng(5)
    a8 = ndimage.uniform_filter(rng.integers(20, 160, (48, 40, 3)).astype(np.uint8), (3, 3, 1))
    a16 = a8.astype(np.uint16) * 257
    b16 = np.clip(np.round(a16 * 1.4), 0, 65535).astype(np.uint16)
    (tmp_path / "a.png").write_bytes(png16_bytes(a16))
    (tmp_path / "b.png").write_bytes(png16_bytes(b16))
    common = ["--model", str(tiny_nets), "--device", "cpu", "--no-progress", "--min-region", "0"]
    assert cli_main(["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "f.png"),
                     "--match-output-exposure", *common]) == 0
    f16 = read_source_set([tmp_path / "f.png"]).full[0]
    assert f16.dtype == np.uint16 and np.abs(f16.astype(float) - a16).max() < 257 * 1.5  # B at A's exposure
    dm = np.zeros(a16.shape[:2], bool)
    dm[:, :20] = True  # the right half from B, at A's exposure
    gains = np.full(3, 1 / 1.4)
    got = batch.compose_full([a16, b16], [dm], [gains])
    assert np.abs(got.astype(float) - a16).max() <= 1  # without the gains: B's own, 1.4x
    assert np.array_equal(batch.compose_full([a16, b16], [dm])[:, 20:], b16[:, 20:])
    idx = np.where(dm, 0, 1).astype(np.int16)
    assert np.array_equal(batch.compose_index([a16, b16], idx, [None, gains]), got)
    Image.fromarray(a8).save(tmp_path / "a8.png")
    Image.fromarray(np.clip(np.round(a8 * 1.4), 0, 255).astype(np.uint8)).save(tmp_path / "b8.png")
    Image.fromarray(np.clip(np.round(a8 * 0.7), 0, 255).astype(np.uint8)).save(tmp_path / "c8.png")
    shots = [str(tmp_path / f"{x}8.png") for x in "abc"]
    capsys.readouterr()
    assert cli_main(["fuse", *shots, "-o", str(tmp_path / "j.png"), "--stack-rule", "joint", *common]) == 0
    err = capsys.readouterr().err
    assert "b8.png differs from" in err and "c8.png differs from" in err and "darker" in err
    assert cli_main(["fuse", *shots, "-o", str(tmp_path / "k.png"), "--stack-rule", "joint",
                     "--match-output-exposure", *common]) == 0
    assert "differs from" not in capsys.readouterr().err
    k = np.asarray(Image.open(tmp_path / "k.png")).astype(float)
    assert np.abs(k - a8).max() <= 3


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.EOPNOTSUPP])
def test_output_lock_goes_on_without_locks_where_the_filesystem_has_none(tmp_path: Path, capsys: pytest.CaptureFixture,
                                                                         monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    """On NFS without lockd (or some FUSE mounts) ``flock`` raises ENOLCK/EOPNOTSUPP: fuse-dir
    ended with "internal error". It now goes on without the lock and says so once."""
    import fcntl

    def no_locks(fh, op):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    out = tmp_path / "nfs-out"
    with batch.output_lock(out):
        assert out.is_dir()
    with batch.output_lock(out):
        pass
    err = capsys.readouterr().err
    assert err.count("does not support locks") == 1, err
    assert f"{out}: this filesystem does not support locks ({errno.errorcode[code]})" in err, err
    assert not (out / batch.LOCK_FILE).exists()

    def other(fh, op):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fcntl, "flock", other)
    with pytest.raises(OSError):  # other errors are not taken for a missing lock service
        with batch.output_lock(out):
            pass


class _FullDiskFile:
    """An open file whose writes fail as on a full disk (ENOSPC); the rest is the real file's."""

    def __init__(self, fh) -> None:
        self._fh = fh

    def write(self, text: str) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name: str):
        return getattr(self._fh, name)


def test_fuse_dir_on_a_full_disk_names_the_lock_file_and_leaves_no_new_folder(
        tmp_path: Path, nets: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a full disk ``fuse-dir --skip-existing`` with nothing left to fuse failed writing its
    lock's process id with "error: OUT: No space left on device" (neither the lock file nor the
    full disk named), and a new OUT was left behind empty. The error now names the lock file
    and says the disk is full; a new OUT is removed again."""
    from bafusion import atomic

    src, out, new = tmp_path / "in", tmp_path / "out", tmp_path / "new-out"
    src.mkdir()
    for n, x in zip("AB", pair(3)):
        Image.fromarray(x).save(src / f"p-{n}.png")
    common = ["--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(["fuse-dir", str(src), str(out), *common]) == 0
    capsys.readouterr()
    monkeypatch.setattr(atomic, "open", lambda *a, **k: _FullDiskFile(open(*a, **k)), raising=False)
    # the full disk would fail fuse-dir's MLflow store too (one more warning line, and tracking
    # off for the rest of this test process): this test is about the lock
    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    for folder, extra in ((out, ["--skip-existing"]), (new, [])):
        assert cli_main(["fuse-dir", str(src), str(folder), *common, *extra]) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err
        assert f"{folder / batch.LOCK_FILE}: cannot write fuse-dir's lock: " in err, err
        assert "the disk is full" in err and "free space" in err, err
        assert not (folder / batch.LOCK_FILE).exists()
    assert (out / "p.png").is_file()  # the earlier output kept
    assert not new.exists()  # made for the lock only: removed again
    # a later write failing so (here the record's) leaves no new OUT either (only a refusal did)
    monkeypatch.undo()

    def full(folder, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(folder / batch.OUTPUT_MARKER))

    monkeypatch.setattr(batch, "write_marker", full)
    assert cli_main(["fuse-dir", str(src), str(new), *common]) == 2
    assert os.strerror(errno.ENOSPC) in capsys.readouterr().err
    assert not new.exists()


def test_fuse_dir_fuses_avif_and_jpeg_2000_shots_as_fuse_does(tmp_path: Path, nets: Path, capsys) -> None:
    """A folder of .avif shots (which fuse reads) fused nothing: fuse-dir took only .png .jpg
    .jpeg .bmp .tif .tiff .webp ('no pair or stack to fuse'). Pairs and a sub-folder stack of
    .avif and .jp2 shots are fused now."""
    from PIL import features

    ext = ".avif" if features.check("avif") else ".jp2"
    src = tmp_path / "in"
    (src / "stack").mkdir(parents=True)
    a, b = pair(1)
    Image.fromarray(a).save(src / f"p-A{ext}", quality=100)
    Image.fromarray(b).save(src / f"p-B{ext}", quality=100)
    for i, im in enumerate(pair(1)):
        Image.fromarray(im).save(src / "stack" / f"IMG_000{i}.jp2")
    out = tmp_path / "out"
    assert cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]) == 0, \
        capsys.readouterr()
    assert (out / "p.png").is_file() and (out / "stack.png").is_file()
    assert "fused 2 stack(s)" in capsys.readouterr().out


def test_fuse_dir_fuses_heic_shots_where_a_pillow_plugin_reads_them(tmp_path: Path, nets: Path, capsys,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """HEIF is read where a Pillow plugin registers it (bafusion.io.READ_FORMATS; pillow-heif,
    which bafusion neither needs nor registers itself): read_image read a HEIC then, but fuse-dir
    passed a folder of them over without a word (no stack, no line: they were neither shots nor
    "not read"). They are shots there now (bafusion.io.read_suffixes); without the plugin they
    stay refused (the test after this one)."""
    pillow_heif = pytest.importorskip("pillow_heif")
    from bafusion.io import read_image, read_suffixes

    # the registration is Pillow's global state: on copies (of the tables Pillow's plugins all
    # filled first), given back after the test
    Image.init()
    for table in ("ID", "OPEN", "EXTENSION", "MIME", "SAVE", "SAVE_ALL", "DECODERS", "ENCODERS"):
        value = getattr(Image, table)
        monkeypatch.setattr(Image, table, list(value) if isinstance(value, list) else dict(value))
    assert ".heic" not in read_suffixes()
    pillow_heif.register_heif_opener()
    assert ".heic" in read_suffixes() and ".hif" in read_suffixes()
    src = tmp_path / "in"
    (src / "stack").mkdir(parents=True)
    a, b = pair(1)
    Image.fromarray(a).save(src / "p-A.heic", quality=95)
    Image.fromarray(b).save(src / "p-B.HEIC", quality=95)
    for i, im in enumerate(pair(1)):
        Image.fromarray(im).save(src / "stack" / f"IMG_000{i}.heic", quality=95)
    assert read_image(src / "p-A.heic").shape == a.shape
    out = tmp_path / "out"
    assert cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]) == 0, \
        capsys.readouterr()
    assert (out / "p.png").is_file() and (out / "stack.png").is_file()
    captured = capsys.readouterr()
    assert "fused 2 stack(s)" in captured.out and "HEIC" not in captured.err, captured


def test_fuse_dir_names_the_camera_raw_and_heic_files_it_does_not_read(tmp_path: Path, nets: Path, capsys) -> None:
    """A folder of RAW (or HEIC) shots said "stack 'raws' has only 0 shot(s)", RAW files beside
    a camera's JPEGs or directly in IN were passed over without a word, and a folder of RAW files
    only said "no pair or stack to fuse (name shots ...)". Each folder's files are named in one
    line with what to convert them to; a RAW + JPEG folder is fused from its JPEGs, status 0 for it."""
    import struct

    rng = np.random.default_rng(0)
    cr2 = b"II*\x00\x10\x00\x00\x00CR\x02\x00" + rng.bytes(2000)
    heic = struct.pack(">I4s4sI", 24, b"ftyp", b"heic", 0) + b"mif1heic" + rng.bytes(2000)
    src = tmp_path / "in"
    for sub in ("raws", "mixed", "heics"):
        (src / sub).mkdir(parents=True)
    for i, im in enumerate(pair(1)):
        Image.fromarray(im).save(src / "mixed" / f"IMG_000{i}.JPG", quality=95)
        for folder in (src / "raws", src / "mixed"):
            (folder / f"IMG_000{i}.CR2").write_bytes(cr2)
        (src / "heics" / f"IMG_000{i}.HEIC").write_bytes(heic)
    for n in range(7):
        (src / f"DSC_{n:04d}.NEF").write_bytes(cr2)
    out = tmp_path / "out"
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == batch.EXIT_SKIPPED
    o, err = capsys.readouterr()
    assert "fused 1 stack(s)" in o and "skipped 2" in o and (out / "mixed.png").is_file()
    lines = err.splitlines()
    assert len(lines) == 4, err  # one per folder
    advice = "convert them to TIFF (16-bit keeps the most) or JPEG first, e.g. with the camera's software"
    assert lines[0] == (f"bafusion fuse-dir: {src}: 7 camera RAW files are not read (DSC_0000.NEF, DSC_0001.NEF, "
                        f"DSC_0002.NEF, DSC_0003.NEF, DSC_0004.NEF and 2 more): {advice}, darktable, RawTherapee or "
                        "'dcraw -T -6'")
    assert lines[1].startswith(f"bafusion fuse-dir: {src / 'mixed'}: 2 camera RAW files are not read (IMG_0000.CR2, "
                               "IMG_0001.CR2); stack 'mixed' is fused from its other images; to fuse them, convert")
    assert lines[2] == (f"bafusion fuse-dir: skipped {src / 'heics'}: stack 'heics' has only 0 shot(s) bafusion reads; "
                        "its 2 HEIC/HEIF files are not read (IMG_0000.HEIC, IMG_0001.HEIC): convert them to TIFF "
                        "(16-bit keeps the most) or JPEG first, e.g. with 'heif-convert' or darktable")
    assert lines[3].startswith(f"bafusion fuse-dir: skipped {src / 'raws'}: stack 'raws' has only 0 shot(s) bafusion "
                               f"reads; its 2 camera RAW files are not read (IMG_0000.CR2, IMG_0001.CR2): {advice}")
    # RAW files alone: the refusal names them
    for sub in ("raws", "mixed", "heics"):
        for f in (src / sub).iterdir():
            f.unlink()
        (src / sub).rmdir()
    assert cli_main([*argv[:2], str(tmp_path / "out2"), *argv[3:]]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"bafusion fuse-dir: error: {src}: no pair or stack to fuse: 7 camera RAW files are not "
                          "read (DSC_0000.NEF"), err


def test_fuse_dir_says_the_camera_named_files_in_in_in_one_line_with_how_to_lay_them_out(
        tmp_path: Path, nets: Path, capsys) -> None:
    """Camera-named shots (IMG_0001.JPG, ...) directly in IN beside a stack folder gave one
    'skipped ...: name does not follow the rule' line each and no hint; they are one line with
    their count, a few names and the layout fuse-dir takes (a sub-folder per stack, or the
    <name>-A.<ext> names); one such file gets the hint too. The count and status are as before."""
    src = tmp_path / "in"
    (src / "flower").mkdir(parents=True)
    a, b = pair(1)
    for i in range(1, 8):
        Image.fromarray(a).save(src / f"IMG_{i:04d}.JPG")
    Image.fromarray(a).save(src / "flower" / "IMG_0101.JPG")
    Image.fromarray(b).save(src / "flower" / "IMG_0102.JPG")
    argv = ["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == batch.EXIT_SKIPPED
    o, err = capsys.readouterr()
    assert "fused 1 stack(s)" in o and "skipped 7 (" in o
    assert err.splitlines() == [
        f"bafusion fuse-dir: skipped 7 images directly in {src}: their names do not follow the rule <name>-A.<ext>, "
        "<name>-B.<ext>, ... (IMG_0001.JPG, IMG_0002.JPG, IMG_0003.JPG, IMG_0004.JPG, IMG_0005.JPG and 2 more): files "
        "directly in the input folder are shots only when so named; put each stack in a sub-folder of its own (its "
        "images are fused in name order) or rename its shots so"]
    for i in range(2, 8):
        (src / f"IMG_{i:04d}.JPG").unlink()
    assert cli_main(argv) == batch.EXIT_SKIPPED
    assert capsys.readouterr().err.splitlines() == [
        f"bafusion fuse-dir: skipped {src / 'IMG_0001.JPG'}: name does not follow the rule <name>-A.<ext>, "
        "<name>-B.<ext>, ...: files directly in the input folder are shots only when so named; put each stack in a "
        "sub-folder of its own (its images are fused in name order) or rename its shots so"]


def test_fuse_dir_says_a_raw_jpeg_stack_is_fused_only_when_it_was(tmp_path: Path, nets: Path, capsys) -> None:
    """The line naming a folder's RAW files said "stack 'x' is fused from its other images"
    before any fusing, so a stack then skipped (a damaged JPEG among its shots) was said fused
    and skipped at once. The line is now made after the fusing from what happened: fused, its
    output already there (--skip-existing), skipped (no claim that it is fused)."""
    rng = np.random.default_rng(0)
    cr2 = b"II*\x00\x10\x00\x00\x00CR\x02\x00" + rng.bytes(2000)
    src = tmp_path / "in"
    for sub in ("good", "hurt"):
        (src / sub).mkdir(parents=True)
        for i, im in enumerate(pair(1)):
            Image.fromarray(im).save(src / sub / f"IMG_000{i}.JPG", quality=95)
            (src / sub / f"IMG_000{i}.CR2").write_bytes(cr2)
    (src / "hurt" / "IMG_0002.JPG").write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(300))  # a damaged JPEG
    out = tmp_path / "out"
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == batch.EXIT_SKIPPED
    o, err = capsys.readouterr()
    assert "fused 1 stack(s)" in o and "skipped 1" in o and not (out / "hurt.png").exists()
    hurt = [line for line in err.splitlines() if line.startswith(f"bafusion fuse-dir: {src / 'hurt'}: ")]
    assert len(hurt) == 1 and "is fused" not in hurt[0], err
    assert "2 camera RAW files are not read (IMG_0000.CR2, IMG_0001.CR2); stack 'hurt' is skipped (listed below); " \
           "to fuse them, convert" in hurt[0], err
    assert f"bafusion fuse-dir: {src / 'good'}: 2 camera RAW files are not read (IMG_0000.CR2, IMG_0001.CR2); " \
           "stack 'good' is fused from its other images; to fuse them, convert" in err
    assert any(line.startswith("bafusion fuse-dir: skipped hurt: ") for line in err.splitlines()), err
    # again with --skip-existing: 'good' is not fused this time, its output from its other images is there
    assert cli_main([*argv, "--skip-existing"]) == batch.EXIT_SKIPPED
    err = capsys.readouterr().err
    assert "stack 'good' is fused" not in err and "stack 'hurt' is fused" not in err, err
    assert "stack 'good' was fused from its other images (its output is already there); to fuse them" in err, err


@pytest.mark.parametrize("rule", ["chain", "joint"])
def test_a_stack_names_each_step_as_it_fuses(tmp_path: Path, nets: Path, capsys, monkeypatch, rule: str) -> None:
    """A stack of many shots (10 frames: 90 s) was fused with nothing said between 'fusing 10
    images' and the end (fuse), or between two stacks (fuse-dir). Each step is named as it
    starts: fuse on a terminal (as its other steps), fuse-dir on a terminal and in its plain
    lines without one; none with --quiet, and none for a pair (one step)."""
    import bafusion.progress as progress

    frames = [*pair(3), *pair(3)]  # 4 shots of one scene
    src = tmp_path / "in"
    (src / "s").mkdir(parents=True)
    paths = []
    for i, x in enumerate(frames):
        paths.append(src / "s" / f"f{i}.png")
        Image.fromarray(x).save(paths[-1])
    for n, x in zip("AB", pair(4)):
        Image.fromarray(x).save(src / f"p-{n}.png")
    base = ["--model", str(nets), "--device", "cpu", "--stack-rule", rule]
    what = "fusing" if rule == "chain" else "scoring"
    chain = ["step 1/3: fusing f1.png into f0.png", "step 2/3: fusing f2.png into the fusion of f0.png and f1.png",
             "step 3/3: fusing f3.png into the fusion of f0.png, f1.png and f2.png"]
    # the joint rule's steps shrink (3, 2, 1 of the 6 pair scorings): each line says which it runs
    joint = ["step 1/3: scoring f0.png against the 3 shots after it (pair scorings 1-3 of 6)",
             "step 2/3: scoring f1.png against the 2 shots after it (pair scorings 4-5 of 6)",
             "step 3/3: scoring f2.png against the shot after it (pair scoring 6 of 6)"]
    steps = chain if rule == "chain" else joint
    for terminal, quiet in ((True, []), (False, []), (True, ["--quiet"])):
        monkeypatch.setattr(progress, "stderr_is_terminal", lambda: terminal)
        out = tmp_path / f"f{terminal}{len(quiet)}.png"
        assert cli_main(["fuse", *map(str, paths), "-o", str(out), *base, *quiet]) == 0
        err = capsys.readouterr().err
        said = [line for line in err.splitlines() if f": {what} f" in line]
        assert said == ([f"bafusion fuse: {s} ..." for s in steps] if terminal and not quiet else []), err
        assert cli_main(["fuse-dir", str(src), str(tmp_path / f"o{terminal}{len(quiet)}"), *base, *quiet]) == 0
        err = capsys.readouterr().err
        # in a log after the time (test_progress_log.py)
        said = [line[20:] if not terminal else line for line in err.splitlines() if ": step " in line]
        assert said == ([] if quiet else [f"bafusion fuse-dir: s: {s} ..." for s in steps]), err
        if not terminal:  # before the stack's own line, none for the pair p
            assert err.index("step 3/3") < err.index("bafusion fuse-dir: 2/2 s: fused in "), err


def _pairs_in(folder: Path, seeds: dict[str, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, seed in seeds.items():
        for n, x in zip("AB", pair(seed)):
            Image.fromarray(x).save(folder / f"{name}-{n}.png")
    return folder


def test_fuse_dir_never_writes_through_a_link_to_a_shot_or_a_file_of_another_format(
        tmp_path: Path, nets: Path, capsys) -> None:
    """OUT/p1.png a symbolic link to IN/p1-A.png: fuse-dir wrote the fusion into the shot (exit 0;
    fuse -o refuses an input). A link to a shot, or to a file of another format (keepme.jpg
    would get PNG bytes), is now not written through: that stack is skipped with the reason."""
    src = _pairs_in(tmp_path / "in", {"p1": 3, "p2": 4, "p3": 5})
    out = tmp_path / "out"
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    shot = (src / "p1-A.png").read_bytes()
    keep = tmp_path / "keepme.jpg"
    keep.write_bytes(b"my jpeg")
    for name, to in (("p1", src / "p1-A.png"), ("p2", keep)):
        (out / f"{name}.png").unlink()
        (out / f"{name}.png").symlink_to(to)
    rc = cli_main(argv)
    o, err = capsys.readouterr()
    assert rc == batch.EXIT_SKIPPED, err
    assert (src / "p1-A.png").read_bytes() == shot and keep.read_bytes() == b"my jpeg"
    assert "a file of the input folder: fuse-dir never overwrites an input" in err
    assert "whose suffix is not .png" in err and "fused 1 stack(s)" in o
    # a link to a png elsewhere is written through, as before
    other = tmp_path / "mine.png"
    other.write_bytes(b"x")
    (out / "p2.png").unlink()
    (out / "p2.png").symlink_to(other)
    (out / "p1.png").unlink()
    assert cli_main(argv) == 0, capsys.readouterr().err
    assert Image.open(other).size == (N, N) and (out / "p2.png").is_symlink()
    # in a fresh output folder (no record) the link is refused before any work
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "p1.png").symlink_to(src / "p1-A.png")
    assert cli_main(["fuse-dir", str(src), str(fresh), "--model", str(nets), "--device", "cpu", "--quiet"]) == 2
    assert (src / "p1-A.png").read_bytes() == shot and "p1.png" in capsys.readouterr().err


def test_fuse_dir_replaces_only_its_own_outputs_of_the_same_input_folder(tmp_path: Path, nets: Path, capsys) -> None:
    """fuse-dir IN OUT overwrote a file of the user's named like an output (OUT/p1.png) and the
    outputs of an earlier batch of another input folder (day2 into day1's OUT), silently, exit 0.
    It now refuses before any work, naming them; its own outputs of the same IN are replaced."""
    day1 = _pairs_in(tmp_path / "day1", {"p1": 3, "p2": 4})
    day2 = _pairs_in(tmp_path / "day2", {"p1": 5, "p2": 6})
    out = tmp_path / "out"
    out.mkdir()
    (out / "p1.png").write_bytes(b"mine")
    run = ["--model", str(nets), "--device", "cpu", "--quiet"]
    rc = cli_main(["fuse-dir", str(day1), str(out), *run])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1, err
    assert "p1.png" in err and "p2.png" not in err and "move them away" in err
    assert (out / "p1.png").read_bytes() == b"mine" and not (out / "p2.png").exists()  # no work done
    # before the nets load (a model that does not exist is not reached)
    rc = cli_main(["fuse-dir", str(day1), str(out), "--model", str(tmp_path / "no-nets"), "--device", "cpu"])
    assert rc == 2 and "p1.png" in capsys.readouterr().err
    (out / "p1.png").unlink()
    assert cli_main(["fuse-dir", str(day1), str(out), *run]) == 0, capsys.readouterr().err
    made = {n: (out / n).read_bytes() for n in ("p1.png", "p2.png")}
    for flags in ((), ("--skip-existing",)):
        rc = cli_main(["fuse-dir", str(day2), str(out), *run, *flags])
        err = capsys.readouterr().err
        assert rc == 2 and "p1.png, p2.png" in err and str(day2) in err, err
        assert {n: (out / n).read_bytes() for n in made} == made
    os.utime(out / "p1.png", ns=(1, 1))
    assert cli_main(["fuse-dir", str(day1), str(out), *run]) == 0, capsys.readouterr().err  # a rerun replaces
    assert (out / "p1.png").stat().st_mtime_ns != 1


def test_fuse_dir_skip_existing_fuses_again_a_stack_whose_shots_changed(tmp_path: Path, nets: Path, capsys) -> None:
    """--skip-existing said "already there" for an output fused from other shots (p1-A re-shot in
    the same IN): it matched names and setup, never the sources. The record now holds each
    output's shots (resolved path, size, time); a change fuses it again, saying why."""
    src = _pairs_in(tmp_path / "in", {"p1": 3, "p2": 4})
    out = tmp_path / "out"
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    p1, p2 = ((out / n).stat().st_mtime_ns for n in ("p1.png", "p2.png"))
    a, _ = pair(7)
    Image.fromarray(a).save(src / "p1-A.png")  # re-shot
    Image.fromarray(pair(7)[1]).save(src / "p1-B.png")
    assert cli_main([*argv, "--skip-existing"]) == 0
    o, err = capsys.readouterr()
    assert "fused 1 stack(s)" in o and "1 already there" in o, o + err
    assert "p1: fused again" in err and "p1-A.png, p1-B.png changed since it was fused" in err, err
    assert (out / "p1.png").stat().st_mtime_ns != p1 and (out / "p2.png").stat().st_mtime_ns == p2
    assert cli_main([*argv, "--skip-existing"]) == 0  # now recorded: kept
    assert "2 already there" in capsys.readouterr().out


def test_stacks_whose_names_differ_only_in_case_are_not_both_fused(tmp_path: Path) -> None:
    """A sub-folder P/ and flat shots p-A.png, p-B.png were stacks P and p, fused to P.png and
    p.png: one file on macOS and Windows, where the second output replaced the first. The names
    are now compared ignoring case: the later stack is skipped, saying why."""
    src = tmp_path / "in"
    (src / "P").mkdir(parents=True)
    a, b = pair(3)
    for folder, names in ((src / "P", ("1.png", "2.png")), (src, ("p-A.png", "p-B.png")), (src, ("q-A.png", "q-B.png"))):
        for n, x in zip(names, (a, b)):
            Image.fromarray(x).save(folder / n)
    groups, skipped = batch.find_groups(src)
    assert sorted(groups) == ["P", "q"]
    assert len(skipped) == 1 and str(src / "p-A.png") in skipped[0][0], skipped
    assert "stack 'p' differs from stack 'P' only in case" in skipped[0][1]


def test_an_output_that_cannot_be_replaced_is_named_once(tmp_path: Path, nets: Path, capsys, monkeypatch) -> None:
    """fuse -o imm.png (an immutable file) said "error: /d/imm.png -> /d/imm.png: Operation not
    permitted": the rename of the temporary file onto the output, both told by the output's path.
    The path is now said once."""
    import errno

    for n, x in zip("AB", pair(3)):
        Image.fromarray(x).save(tmp_path / f"{n}.png")
    out = tmp_path / "imm.png"
    out.write_bytes(b"x")
    real = os.replace

    def refused(a, b, *args, **kwargs):
        if os.fspath(b) == str(out):
            raise OSError(errno.EPERM, os.strerror(errno.EPERM), os.fspath(a), None, os.fspath(b))
        return real(a, b, *args, **kwargs)

    monkeypatch.setattr(os, "replace", refused)
    rc = cli_main(["fuse", str(tmp_path / "A.png"), str(tmp_path / "B.png"), "-o", str(out), "--model", str(nets),
                   "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.strip().splitlines()[-1] == f"bafusion fuse: error: {out}: {os.strerror(errno.EPERM)}", err


def test_fuse_dir_reruns_on_an_output_folder_of_an_earlier_version(tmp_path: Path, nets: Path, capsys,
                                                                    monkeypatch) -> None:
    """A rerun into an OUT made by an earlier version was refused, its outputs called files of
    the user's, for a record listing outputs but not their shots once an upgraded run had
    rewritten it with an empty ``sources`` (a run interrupted before it re-fused them). Such a
    record vouches for the outputs it lists, and the rewritten record keeps them covered until
    re-fused; not for a file it does not list (a user's file named like a new stack's output).
    An empty record (versions before the JSON record) says neither which files are fuse-dir's
    nor from which folder: refused, as another input folder's run would overwrite them."""
    import json

    import bafusion.io

    src = _pairs_in(tmp_path / "in", {"p1": 3, "p2": 4})
    out = tmp_path / "out"
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    marker = out / batch.OUTPUT_MARKER
    doc = json.loads(marker.read_text())
    marker.write_text("")  # (a) an earlier version's empty marker: nothing to vouch for them
    assert cli_main(argv) == 2
    assert "p1.png, p2.png" in capsys.readouterr().err
    # (b) a record of outputs without their shots; the upgraded run is stopped at its first stack
    del doc["sources"]
    marker.write_text(json.dumps(doc))
    _pairs_in(src, {"p3": 7})  # a new stack whose output name a file of the user's has
    (out / "p3.png").write_bytes(b"mine")
    assert cli_main(argv) == 2  # the record does not list p3.png: not replaced
    assert "p3.png" in capsys.readouterr().err
    (out / "p3.png").unlink()
    real = bafusion.io.write_image

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(bafusion.io, "write_image", stopped)
    assert cli_main(argv) == 130
    capsys.readouterr()
    monkeypatch.setattr(bafusion.io, "write_image", real)
    # the outputs kept covered are this IN's: another input folder's run is still refused
    day2 = _pairs_in(tmp_path / "day2", {"p1": 5, "p2": 6})
    assert cli_main(["fuse-dir", str(day2), *argv[2:]]) == 2
    assert "p1.png, p2.png" in capsys.readouterr().err
    assert cli_main([*argv, "--skip-existing"]) == 0, capsys.readouterr().err
    assert cli_main(argv) == 0, capsys.readouterr().err


def test_fuse_dir_skip_existing_refuses_an_earlier_versions_record_and_fuses_it_again_without(
        tmp_path: Path, nets: Path, capsys) -> None:
    """A record of an earlier version lists outputs, not their shots, nor the fusion code's
    digest: --skip-existing kept its outputs "as made by this setup", whatever the code that
    made them (the version number never changed). They are of other fusion code: refused before
    any work, and without --skip-existing fused again (the record vouches that they are
    fuse-dir's outputs of this IN), as the refusal says."""
    import json

    src = _pairs_in(tmp_path / "in", {"p1": 3, "p2": 4})
    out = tmp_path / "out"
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    marker = out / batch.OUTPUT_MARKER
    doc = json.loads(marker.read_text())
    del doc["sources"], doc["code"]  # as a version before either wrote it
    marker.write_text(json.dumps(doc))
    made = {n: (out / n).stat().st_mtime_ns for n in ("p1.png", "p2.png")}
    assert cli_main([*argv, "--skip-existing"]) == 2
    err = capsys.readouterr().err
    assert "other fusion code" in err and "drop --skip-existing (they are then fused again)" in err, err
    assert {n: (out / n).stat().st_mtime_ns for n in made} == made
    assert cli_main(argv) == 0, capsys.readouterr().err
    assert all((out / n).stat().st_mtime_ns != t for n, t in made.items())
    assert json.loads(marker.read_text())["code"] == batch.fusion_code_digest()


def test_fuse_dir_knows_its_input_folder_by_another_spelling(tmp_path: Path, nets: Path, capsys) -> None:
    """The recorded IN was compared as a string: on macOS and Windows, where names ignore case,
    ~/photos/shoot after ~/Photos/Shoot (the same folder) had every output refused as another
    input folder's. The recorded IN (and its shots) now count as this one when it is the same
    folder (os.path.samefile). Here the record names IN by a link to it, a spelling
    Path.resolve() does not turn into this run's."""
    import json

    src = _pairs_in(tmp_path / "in", {"p1": 3, "p2": 4})
    out = tmp_path / "out"
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    spelt = tmp_path / "IN"
    spelt.symlink_to(src.resolve(), target_is_directory=True)
    marker = out / batch.OUTPUT_MARKER
    here = str(src.resolve())
    marker.write_text(marker.read_text().replace(json.dumps(here)[1:-1], json.dumps(str(spelt))[1:-1]))
    assert batch.read_marker(out)["sources"]["p1.png"]["in"] == str(spelt)
    made = {n: (out / n).stat().st_mtime_ns for n in ("p1.png", "p2.png")}
    assert cli_main([*argv, "--skip-existing"]) == 0
    o, err = capsys.readouterr()
    assert "2 already there" in o and "fused again" not in err, o + err
    assert {n: (out / n).stat().st_mtime_ns for n in made} == made
    assert cli_main(argv) == 0, capsys.readouterr().err
    other = _pairs_in(tmp_path / "day2", {"p1": 5, "p2": 6})  # another folder is still another
    assert cli_main(["fuse-dir", str(other), *argv[2:]]) == 2


def test_stacks_are_compared_as_case_ignoring_file_systems_compare_names(tmp_path: Path) -> None:
    """``casefold()`` folded ß to ss: Straße was skipped beside Strasse ("differs only in case"),
    although Straße.png and Strasse.png are two files on macOS and Windows too; and café with
    é composed (NFC) and decomposed (NFD) gave two outputs, one file on macOS (the second
    replaced the first). Names are now compared as those file systems do."""
    src = tmp_path / "in"
    src.mkdir()
    a, b = pair(3)
    nfc, nfd = "caf\u00e9", "cafe\u0301"
    for stack in ("Strasse", "Stra\u00dfe", nfc, nfd):
        for letter, x in zip("AB", (a, b)):
            Image.fromarray(x).save(src / f"{stack}-{letter}.png")
    groups, skipped = batch.find_groups(src)
    assert sorted(groups) == sorted(["Strasse", "Stra\u00dfe", nfd])
    assert len(skipped) == 1 and str(src / f"{nfc}-A.png") in skipped[0][0], skipped
    assert f"stack {nfc!r} differs from stack {nfd!r} only in Unicode normalization" in skipped[0][1]
    # NTFS ignores case, not the normalization: one file on macOS only
    assert "one file on macOS, whose file names also ignore Unicode normalization (not on Windows)" in skipped[0][1]
    assert "(macOS, Windows)" not in skipped[0][1]


def test_the_fuse_set_run_names_the_nets_it_used(tmp_path: Path, nets: Path) -> None:
    """fuse-set's MLflow run (fuse) logged the fusion params only: which weights made its
    accuracies was nowhere. It tags each net's sha256, file and patch, and the model folder."""
    import hashlib
    import json

    from mlflow.tracking import MlflowClient

    from bafusion import tracking

    pairs = _pairs_in(tmp_path / "pairs", {"p1": 3})
    (pairs / "index.json").write_text(json.dumps(["p1"]))
    assert cli_main(["fuse-set", "--pairs", str(pairs), "--models", str(nets), "--out", str(tmp_path / "out"),
                     "--device", "cpu", "--no-progress"]) == 0
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    run = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id],
                             "tags.stage = 'fuse'")[0]
    for role in ("initial", "boundary"):
        assert run.data.tags[f"net.{role}.sha256"] == hashlib.sha256((nets / f"{role}.pt").read_bytes()).hexdigest()
        assert Path(run.data.tags[f"net.{role}.file"]).resolve() == (nets / f"{role}.pt").resolve()
    assert run.data.tags["model_dir"] == str(nets.resolve())


def test_the_fuse_set_run_names_its_folders_as_fuse_dirs_does(tmp_path: Path, nets: Path) -> None:
    """fuse-set's MLflow run (fuse) had no ``output`` tag, while fuse-dir's has its folders as
    ``input`` and ``output``: which run wrote a folder of fused pairs could not be searched for.
    It tags both now (the pairs folder as ``input``)."""
    import json

    from mlflow.tracking import MlflowClient

    from bafusion import tracking

    pairs, out = _pairs_in(tmp_path / "pairs", {"p1": 3}), tmp_path / "out"
    (pairs / "index.json").write_text(json.dumps(["p1"]))
    assert cli_main(["fuse-set", "--pairs", str(pairs), "--models", str(nets), "--out", str(out),
                     "--device", "cpu", "--no-progress"]) == 0
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    runs = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id],
                              f"tags.stage = 'fuse' and tags.output = '{out}'")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["input"] == str(pairs)


def test_fuse_dir_is_tracked_as_fuse_set_is(tmp_path: Path, nets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """fuse-dir logged no MLflow run, while fuse-set and evaluate do under the same switch
    (tracking.enabled: here the tests' store). Its run ``fuse-dir`` holds fuse-set's params
    (``fuse.<key>``), the nets it used, the stacks fused, already there and skipped, and its
    folders as tags; with BAFUSION_MLFLOW=0 none is logged."""
    import hashlib
    from dataclasses import asdict

    from mlflow.tracking import MlflowClient

    from bafusion import tracking
    from bafusion.fusion.params import FusionParams

    src, out = tmp_path / "in", tmp_path / "out"
    _pairs_in(src, {"good": 1})
    Image.fromarray(pair(2)[0]).save(src / "alone-A.png")
    argv = ["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet", "--l", "5"]
    assert cli_main(argv) == batch.EXIT_SKIPPED
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    exp_id = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
    search = f"tags.stage = 'fuse-dir' and tags.output = '{out}'"
    runs = client.search_runs([exp_id], search)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["input"] == str(src)
    assert {k: v for k, v in run.data.metrics.items() if k.startswith("stacks_")} == {
        "stacks_fused": 1, "stacks_existing": 0, "stacks_skipped": 1}
    assert set(run.data.params) == {f"fuse.{k}" for k in asdict(FusionParams())} and run.data.params["fuse.l"] == "5"
    for role in ("initial", "boundary"):
        assert run.data.tags[f"net.{role}.sha256"] == hashlib.sha256((nets / f"{role}.pt").read_bytes()).hexdigest()
    assert run.data.tags["model_dir"] == str(nets.resolve())

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    assert cli_main([*argv, "--skip-existing"]) == batch.EXIT_SKIPPED
    assert len(client.search_runs([exp_id], search)) == 1


def test_fuse_dir_tags_the_quality_its_folder_records(tmp_path: Path, nets: Path) -> None:
    """fuse-dir's MLflow tag ``quality`` was ``--quality`` as given: ``--ext jpg --quality 95``
    was tagged 95 while OUT's record holds it as the default (None: a jpg's 95 writes the bytes
    no --quality writes), so two runs that wrote the same folder had different tags. The tag is
    now the record's quality, "default" where the record holds None."""
    import json

    from mlflow.tracking import MlflowClient

    from bafusion import tracking

    src = tmp_path / "in"
    _pairs_in(src, {"good": 1})
    client = MlflowClient(tracking_uri=tracking.tracking_uri())
    for name, options, tag, recorded in (("jpg95", ["--ext", "jpg", "--quality", "95"], "default", None),
                                         ("jpg", ["--ext", "jpg"], "default", None),
                                         ("jpg90", ["--ext", "jpg", "--quality", "90"], "90", 90),
                                         ("webp", ["--ext", "webp"], "default", None)):
        out = tmp_path / name
        assert cli_main(["fuse-dir", str(src), str(out), *options, "--model", str(nets), "--device", "cpu",
                         "--quiet"]) == 0, name
        assert json.loads((out / batch.OUTPUT_MARKER).read_text())["quality"] == recorded, name
        exp_id = client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id
        runs = client.search_runs([exp_id], f"tags.stage = 'fuse-dir' and tags.output = '{out}'")
        assert len(runs) == 1 and runs[0].data.tags["quality"] == tag, (name, runs[0].data.tags.get("quality"))


def test_a_control_character_in_a_stack_name_is_refused_saying_so(tmp_path: Path, nets: Path, capsys) -> None:
    """The naming rule's ``$`` matched before a final newline: q-A<newline>.png was taken as shot A
    of q and fused with q-B.png (rc 0, "fused 1 stack(s)"); n<newline>l-A.png and n<newline>l-B.png
    were said not to follow the rule (they do: '.' did not match the newline) and the raw newline
    broke the skip line. A stack name holding a control character (a file's directly in IN, a
    sub-folder's) is now skipped saying so, the character escaped; the rule is matched whole."""
    src = tmp_path / "in"
    (src / "t\tab").mkdir(parents=True)
    a, b = pair(3)
    for folder, names in ((src, ("q-A\n.png", "q-B.png")), (src, ("n\nl-A.png", "n\nl-B.png")),
                          (src / "t\tab", ("1.png", "2.png")), (src, ("ok-A.png", "ok-B.png"))):
        for n, x in zip(names, (a, b)):
            Image.fromarray(x).save(folder / n)
    groups, skipped = batch.find_groups(src)
    assert sorted(groups) == ["ok"], groups
    why = dict(skipped)
    assert why[f"{src}/q-A\\n.png"] == f"{batch.CONTROL_NAME} ('\\n'): rename it", skipped
    assert why[f"{src}/n\\nl-A.png"] == why[f"{src}/n\\nl-B.png"] == f"{batch.CONTROL_NAME} ('\\n'): rename it"
    assert why[f"{src}/t\\tab"] == f"{batch.CONTROL_NAME} ('\\t'): rename it"
    assert why[str(src / "q-B.png")] == "stack 'q' has only 1 shot(s)"
    assert not any("\n" in what or "\n" in reason for what, reason in skipped), skipped
    out = tmp_path / "out"
    rc = cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert rc == batch.EXIT_SKIPPED, err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["ok.png"]
    lines = err.splitlines()
    assert all(line.startswith("bafusion fuse-dir: ") for line in lines), err
    assert f"bafusion fuse-dir: skipped {src}/q-A\\n.png: {batch.CONTROL_NAME} ('\\n'): rename it" in lines, err


def test_a_jpeg_output_keeps_the_first_jpegs_chroma_subsampling(tmp_path: Path, nets: Path) -> None:
    """A JPEG output was always 4:2:0, also from 4:4:4 or 4:2:2 JPEG shots (a fused JPEG visibly
    worse in colour detail than its sources). ``fuse``, ``fuse-dir --ext jpg`` and ``baseline``
    write the first source's subsampling when it is a JPEG, else 4:4:4 (PNG shots)."""
    from PIL import JpegImagePlugin

    def sampling(path: Path) -> int:
        with Image.open(path) as im:
            return JpegImagePlugin.get_sampling(im)

    a8, b8 = pair(1)
    common = ["--model", str(nets), "--device", "cpu", "--quiet"]
    for name, number in (("4:4:4", 0), ("4:2:2", 1), ("4:2:0", 2)):
        src = tmp_path / name.replace(":", "")
        src.mkdir()
        Image.fromarray(a8).save(src / "p-A.jpg", quality=95, subsampling=name)
        Image.fromarray(b8).save(src / "p-B.jpg", quality=95, subsampling="4:2:0")
        out = tmp_path / f"f{number}.jpg"
        assert cli_main(["fuse", str(src / "p-A.jpg"), str(src / "p-B.jpg"), "-o", str(out), *common]) == 0
        assert sampling(out) == number, name
        assert cli_main(["fuse-dir", str(src), str(tmp_path / f"dir{number}"), "--ext", "jpg", *common]) == 0
        assert sampling(tmp_path / f"dir{number}" / "p.jpg") == number, name
        assert cli_main(["baseline", str(src / "p-A.jpg"), str(src / "p-B.jpg"), "-o", str(tmp_path / "base.jpg"),
                         "--method", "laplacian"]) == 0
        assert sampling(tmp_path / "base.jpg") == number, name
    Image.fromarray(a8).save(tmp_path / "a.png")
    Image.fromarray(b8).save(tmp_path / "b.png")
    argv = ["fuse", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "-o", str(tmp_path / "p.jpg"), *common]
    assert cli_main(argv) == 0
    assert sampling(tmp_path / "p.jpg") == 0


def test_an_image_without_a_file_extension_is_listed_not_passed_over(tmp_path: Path) -> None:
    """fuse-dir took shots by their suffix and passed over an image whose extension was lost
    (``p-C``, a stack folder's ``3``) without a word: the stacks fused without it. Now it is
    listed as skipped, with the extension its bytes call for; other files without one (a
    README, a dot-file) are still not."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8))
    for n in ("p-A.png", "p-B.png", "p-C"):
        img.save(tmp_path / n, format="PNG")
    (tmp_path / "README").write_text("shots of the garden\n")
    (tmp_path / "s").mkdir()
    for n in ("1.png", "2.png"):
        img.save(tmp_path / "s" / n)
    img.save(tmp_path / "s" / "3", format="JPEG")
    img.save(tmp_path / "s" / ".hidden", format="PNG")
    groups, skipped = batch.find_groups(tmp_path)
    assert {k: [q.name for q in v] for k, v in groups.items()} == {"p": ["p-A.png", "p-B.png"], "s": ["1.png", "2.png"]}
    assert sorted(skipped) == [
        (str(tmp_path / "p-C"), "a PNG image without a file extension, and fuse-dir takes shots by theirs: rename it "
                                "p-C.png to fuse it"),
        (str(tmp_path / "s" / "3"), "a JPEG image without a file extension, and fuse-dir takes shots by theirs: "
                                    "rename it 3.jpg to fuse it")]
    assert batch.skip_lines(skipped) == skipped  # listed one by one, as fuse-dir prints them


def test_an_image_without_a_file_extension_outside_the_naming_rule_is_not_told_to_take_one_only(tmp_path: Path) -> None:
    """An image without a suffix directly in IN whose name is outside the rule (``photo``) was told
    "rename it photo.png to fuse it": so renamed, it is skipped as outside the naming rule. Its
    reason names the rule too; in a stack folder (``s/3``) the extension alone is what it lacks."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8))
    img.save(tmp_path / "photo", format="PNG")
    (tmp_path / "s").mkdir()
    img.save(tmp_path / "s" / "photo", format="PNG")
    skipped = dict(batch.find_groups(tmp_path)[1])
    said = skipped[str(tmp_path / "photo")]
    assert "rename it photo.png to fuse it" not in said and "<name>-A.png" in said, said
    assert skipped[str(tmp_path / "s" / "photo")].endswith("rename it photo.png to fuse it")


def test_an_image_without_a_file_extension_is_told_a_suffix_read_for_its_format(tmp_path: Path) -> None:
    """The suffix told was Pillow's format name in lower case: a JPEG 2000 file was told
    "rename it p-C.jpeg2000", a suffix fuse-dir does not read (it reads .jp2). Now a suffix read
    for that format."""
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (16, 20, 3), dtype=np.uint8))
    try:
        img.save(tmp_path / "p-C", format="JPEG2000")
    except (OSError, KeyError):
        pytest.skip("this Pillow writes no JPEG 2000")
    (why,) = [w for _, w in batch.find_groups(tmp_path)[1]]
    assert why.endswith("rename it p-C.jp2 to fuse it"), why



def test_save_registered_folder_deeper_inside_in_is_refused(tmp_path: Path) -> None:
    """``fuse-dir IN OUT --save-registered IN/sub/x`` was taken (only IN and its direct
    sub-folders were refused, though --help says "not IN nor a sub-folder of IN"): it made IN/sub,
    which every later run read as a stack of no shots, skipped, exit 3. Now refused before any
    work; a folder inside OUT, itself inside IN, is still allowed (OUT is not read for stacks)."""
    from bafusion.errors import UserError

    src = tmp_path / "in"
    src.mkdir()
    shots = []
    for s in "AB":
        Image.fromarray(np.full((8, 8), 9, np.uint8)).save(src / f"p-{s}.png")
        shots.append(src / f"p-{s}.png")
    groups = {"p": shots}
    out = tmp_path / "out"
    for folder in (src, src / "sub", src / "sub" / "x", src / "sub" / "x" / "y"):
        with pytest.raises(UserError, match="the --save-registered folder is"):
            batch.check_registered_folder(src, out, groups, folder)
    inner_out = src / "fused"
    for folder in (inner_out, inner_out / "reg", tmp_path / "reg"):
        batch.check_registered_folder(src, inner_out, groups, folder)  # not refused


def test_the_folder_out_lies_in_is_no_stack(tmp_path: Path) -> None:
    """``fuse-dir IN IN/a/b`` made IN/a, which the next run (``--skip-existing`` too) read as a
    stack of no shots: "skipped IN/a: stack 'a' has only 0 shot(s)", exit 3 for a batch that
    had fused everything. A sub-folder of IN that holds OUT and no shot is no stack now; one
    that holds shots beside OUT is still one."""
    src = tmp_path / "in"
    src.mkdir()
    for s in "AB":
        Image.fromarray(np.full((8, 8), 9, np.uint8)).save(src / f"p-{s}.png")
    out = src / "a" / "b"
    out.mkdir(parents=True)
    groups, skipped = batch.find_groups(src, exclude=out)
    assert set(groups) == {"p"} and not skipped, (groups, skipped)
    for s in "AB":
        Image.fromarray(np.full((8, 8), 9, np.uint8)).save(src / "a" / f"{s}.png")
    groups, _ = batch.find_groups(src, exclude=out)
    assert set(groups) == {"p", "a"}, groups


def test_fuse_dir_skips_a_stack_whose_output_name_is_too_long_and_fuses_the_others(
        tmp_path: Path, nets: Path, capsys) -> None:
    """A sub-folder stack named with 253 bytes (its output <name>.png 257) stopped the whole batch
    with "File name too long", exit 2, nothing fused; a 249-byte pair name with --save-registered
    (<name>-registered2.png, 265 bytes) failed only after its fusion. Such a stack is now skipped
    before any work, naming the output and its length, and the others are fused."""
    src = _pairs_in(tmp_path / "in", {"ok": 3})
    long_dir = src / ("S" * 253)
    long_dir.mkdir()
    for i, x in enumerate(pair(4), 1):
        Image.fromarray(x).save(long_dir / f"{i}.png")
    out = tmp_path / "out"
    rc = cli_main(["fuse-dir", str(src), str(out), "--model", str(nets), "--device", "cpu", "--quiet"])
    o, err = capsys.readouterr()
    assert rc == batch.EXIT_SKIPPED, err
    assert (out / "ok.png").is_file() and "fused 1 stack(s)" in o
    assert "the output's name is 257 bytes, longer than the 255" in err
    # --save-registered: refused before the fusion, so no output is left for a stack called skipped
    src2 = _pairs_in(tmp_path / "in2", {"M" * 249: 5})
    out2, reg = tmp_path / "out2", tmp_path / "reg"
    rc = cli_main(["fuse-dir", str(src2), str(out2), "--model", str(nets), "--device", "cpu", "--quiet",
                   "--save-registered", str(reg)])
    err = capsys.readouterr().err
    assert rc == batch.EXIT_NONE_FUSED, err
    assert "-registered2.png: the registered source's name is 265 bytes" in err and not out2.exists()


def test_a_stack_skipped_for_its_long_name_is_named_by_its_folder_or_its_shots(tmp_path: Path) -> None:
    """The skipped line of a stack whose output name is too long named a stack of three shots
    in IN itself by IN (the shots' folder), and a sub-folder's stack of two by its two shots: a
    stack is named by its folder, or by its shots when they lie in IN, as find_groups names them."""
    src = tmp_path / "in"
    src.mkdir()
    top, sub = "T" * 249, "S" * 253  # top: its <name>-registered3.png is 265 bytes
    for c in "ABC":
        Image.fromarray(np.full((8, 8), 9, np.uint8)).save(src / f"{top}-{c}.png")
    (src / sub).mkdir()
    for c in "12":
        Image.fromarray(np.full((8, 8), 9, np.uint8)).save(src / sub / f"{c}.png")
    groups, _ = batch.find_groups(src)
    skips = dict(batch._long_name_skips(groups, src, tmp_path / "out", "png", tmp_path / "reg"))
    assert not groups, groups
    assert set(skips) == {", ".join(str(src / f"{top}-{c}.png") for c in "ABC"), str(src / sub)}, skips
    assert skips[str(src / sub)] == (f"{tmp_path / 'out' / (sub + '.png')}: the output's name is 257 bytes, longer "
                                     "than the 255 a file name may have there; shorten the stack's name")



def test_the_folder_an_earlier_out_lies_in_is_no_stack_for_another_out(tmp_path: Path) -> None:
    """After ``fuse-dir IN IN/a/b``, ``fuse-dir IN OUT2`` read IN/a (which holds only the earlier
    run's output folder) as a stack of no shots: "skipped IN/a: stack 'a' has only 0 shot(s)",
    exit 3. A sub-folder without shots that holds an output folder (its record), at any depth,
    is no stack; an empty one still is, as before."""
    src = tmp_path / "in"
    src.mkdir()
    for s in "AB":
        Image.fromarray(np.full((8, 8), 9, np.uint8)).save(src / f"p-{s}.png")
    for earlier in (src / "a" / "b", src / "c" / "d" / "e"):
        earlier.mkdir(parents=True)
        Image.fromarray(np.full((8, 8), 9, np.uint8)).save(earlier / "p.png")
        (earlier / batch.OUTPUT_MARKER).write_text("{}")
    (src / "empty").mkdir()
    groups, skipped = batch.find_groups(src, exclude=tmp_path / "out2")
    assert set(groups) == {"p"}, groups
    assert [Path(f).name for f, _ in skipped] == ["empty"], skipped


def test_the_search_for_an_earlier_out_in_a_folder_without_shots_is_bounded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A sub-folder without shots was walked whole for an earlier output folder nested in it:
    a tree of 20,000 empty folders took ~0.9 s of every fuse-dir run (warm cache, loaded
    machine). The search reads the nearest folders first and at most OUTPUT_SEARCH_FOLDERS of
    them; past it the folder is a stack of 0 shots, listed as skipped."""
    src = tmp_path / "in"
    wide = src / "archive"
    for i in range(40):
        for j in range(40):
            (wide / f"d{i}" / f"e{j}").mkdir(parents=True)  # 1,640 folders below archive/
    earlier = wide / "old"  # fuse-dir IN IN/archive/old: found among the first folders read
    earlier.mkdir()
    (earlier / batch.OUTPUT_MARKER).write_text("{}")
    read = []
    scandir = os.scandir
    monkeypatch.setattr(os, "scandir", lambda path=".": (read.append(path), scandir(path))[1])
    assert batch._holds_output_folder(wide)
    assert len(read) <= 42, len(read)
    (earlier / batch.OUTPUT_MARKER).unlink()
    deep = wide / "d39" / "e39" / "f"  # below the 1,641 folders of the two levels above it
    deep.mkdir()
    (deep / batch.OUTPUT_MARKER).write_text("{}")
    read.clear()
    assert not batch._holds_output_folder(wide)
    assert len(read) == batch.OUTPUT_SEARCH_FOLDERS + 1, len(read)
    monkeypatch.setattr(batch, "OUTPUT_SEARCH_FOLDERS", 2000)
    assert batch._holds_output_folder(wide)  # within a larger bound: found
    monkeypatch.setattr(batch, "OUTPUT_SEARCH_FOLDERS", 1000)
    _, skipped = batch.find_groups(src)
    assert [(Path(f).name, "only 0 shot(s)" in why) for f, why in skipped] == [("archive", True)], skipped


def test_the_bounded_search_for_an_earlier_out_does_not_depend_on_the_listing_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The search reads at most OUTPUT_SEARCH_FOLDERS folders below a folder without shots, a
    level's folders in the order the file system listed them: an earlier output among more
    folders than that on one level was found or not (the folder no stack, or a stack of 0 shots:
    exit status 3) by the file system's order (ext4's hash, another on another disk). They are
    read by name."""
    wide = tmp_path / "in" / "archive"
    for i in range(batch.OUTPUT_SEARCH_FOLDERS + 10):
        (wide / f"d{i:04d}").mkdir(parents=True)
    (wide / "a-old").mkdir()  # fuse-dir IN IN/archive/a-old: first by name
    (wide / "a-old" / batch.OUTPUT_MARKER).write_text("{}")
    scandir = os.scandir
    found = {}
    for order in ("listed", "reversed"):
        class Listing:  # os.scandir, its entries in the order given
            def __init__(self, path: str) -> None:
                with scandir(path) as it:
                    entries = list(it)
                self.entries = sorted(entries, key=lambda e: e.name, reverse=order == "reversed")

            def __enter__(self) -> list:
                return self.entries

            def __exit__(self, *exc: object) -> None:
                return None

        monkeypatch.setattr(os, "scandir", Listing)
        found[order] = batch._holds_output_folder(wide)
    assert found == {"listed": True, "reversed": True}, found


def test_a_folder_holding_an_out_and_unread_images_is_still_listed(tmp_path: Path) -> None:
    """A sub-folder without shots that holds an earlier run's output folder (or this run's) is no
    stack, but one that also holds camera RAW files (or an image whose extension was lost) was
    dropped in silence, its files unnamed; it is skipped naming them, as without the output."""
    src = tmp_path / "in"
    src.mkdir()
    for s in "AB":
        Image.fromarray(np.full((8, 8), 9, np.uint8)).save(src / f"p-{s}.png")
    for folder, nested in ((src / "raw", "old"), (src / "lost", "old"), (src / "here", "out")):
        (folder / nested).mkdir(parents=True)
        if nested == "old":
            (folder / nested / batch.OUTPUT_MARKER).write_text("{}")
    for c in "12":
        (src / "raw" / f"x{c}.cr2").write_bytes(b"II*\x00" + bytes(100))
        (src / "here" / f"x{c}.cr2").write_bytes(b"II*\x00" + bytes(100))
    Image.fromarray(np.full((8, 8), 9, np.uint8)).save(src / "lost" / "shot1", format="PNG")
    groups, skipped = batch.find_groups(src, exclude=src / "here" / "out")
    assert set(groups) == {"p"}, groups
    why = dict(skipped)
    assert "x1.cr2, x2.cr2" in why[str(src / "raw")], skipped
    assert "x1.cr2, x2.cr2" in why[str(src / "here")], skipped
    assert str(src / "lost" / "shot1") in why, skipped


def test_a_scale_skipped_is_noted_once_a_size_by_fuse_dir_and_once_a_run_by_fuse_set(
        tmp_path: Path, nets: Path, capsys) -> None:
    """A --scales factor skipped for the pairs' size (working.scales_note) names no file: fuse-dir
    says it once for each size of its stacks (not once a stack), as a 'note:' line, and fuse-set
    once for its pairs of one size (not once a pair)."""
    import json

    src = _pairs_in(tmp_path / "in", {"p1": 3, "p2": 4, "p3": 5})  # N x N
    (src / "small").mkdir()
    for i, x in enumerate(pair(6), 1):
        Image.fromarray(x[:48, :64]).save(src / "small" / f"{i}.png")
    scales = ["--scales", "1,0.5", "--working-min", "0", "--device", "cpu", "--no-progress"]
    capsys.readouterr()
    assert cli_main(["fuse-dir", str(src), str(tmp_path / "out"), "--model", str(nets), *scales]) == 0
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "fuse.scales (--scales)" in line]
    assert len(said) == 2, err
    assert said[0].startswith(f"bafusion fuse-dir: note: fuse.scales (--scales): scale 0.5 skipped for a {N}x{N} "), said
    assert said[1].startswith("bafusion fuse-dir: note: fuse.scales (--scales): scale 0.5 skipped for a 64x48 "), said
    (src / "index.json").write_text(json.dumps(["p1", "p2", "p3"]))
    assert cli_main(["fuse-set", "--pairs", str(src), "--models", str(nets), "--out", str(tmp_path / "set"),
                     *scales]) == 0
    err = capsys.readouterr().err
    assert err.count(f"fuse.scales (--scales): scale 0.5 skipped for a {N}x{N} (WxH) pair") == 1, err
    # as a 'note:' line too (it was "bafusion fuse-set: fuse.scales ...")
    assert f"bafusion fuse-set: note: fuse.scales (--scales): scale 0.5 skipped for a {N}x{N} " in err, err
