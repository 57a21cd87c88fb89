"""The one image reader/writer and the one MATLAB rgb2gray of bafusion.io (issue 17): modes,
bit depths, EXIF orientation, gray conversion, writing."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bafusion.errors import InputFileError, UserError
from bafusion.io import (
    RGB2GRAY,
    gray_float,
    png16_bytes,
    read_image,
    read_images,
    read_matte,
    read_source_set,
    to_gray_u8,
    to_uint8,
    write_image,
)


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (6, 9, 3), dtype=np.uint8)


# --------------------------------------------------------------------------------------
# reader: modes


def test_rgb_and_rgba_read_as_rgb_alpha_dropped_not_composited(tmp_path: Path, rgb) -> None:
    Image.fromarray(rgb).save(tmp_path / "c.png")
    rgba = np.dstack([rgb, np.zeros(rgb.shape[:2], np.uint8)])  # fully transparent
    Image.fromarray(rgba).save(tmp_path / "t.png")
    assert np.array_equal(read_image(tmp_path / "c.png"), rgb)
    got = read_image(tmp_path / "t.png")
    assert got.shape == rgb.shape and np.array_equal(got, rgb)


def test_gray_modes_read_as_gray(tmp_path: Path, rgb) -> None:
    g = rgb[..., 0]
    Image.fromarray(g).save(tmp_path / "l.png")
    Image.fromarray(np.dstack([g, rgb[..., 1]])).save(tmp_path / "la.png")
    Image.fromarray(g).convert("1").save(tmp_path / "one.png")
    assert np.array_equal(read_image(tmp_path / "l.png"), g)
    assert np.array_equal(read_image(tmp_path / "la.png"), g)  # the alpha is not the gray
    one = read_image(tmp_path / "one.png")
    assert one.shape == g.shape and set(np.unique(one)) <= {0, 255} and one.dtype == np.uint8
    assert np.array_equal(one == 255, np.asarray(Image.open(tmp_path / "one.png")))


def test_palette_is_expanded_with_or_without_transparency(tmp_path: Path, rgb) -> None:
    pal = Image.fromarray(rgb).quantize(8)
    pal.save(tmp_path / "p.png")
    pal.save(tmp_path / "pt.png", transparency=0)
    want = np.asarray(pal.convert("RGB"))
    assert np.array_equal(read_image(tmp_path / "p.png"), want)
    assert np.array_equal(read_image(tmp_path / "pt.png"), want)


def test_rgb_option_replicates_gray(tmp_path: Path, rgb) -> None:
    Image.fromarray(rgb[..., 2]).save(tmp_path / "l.png")
    Image.fromarray(rgb).save(tmp_path / "c.png")
    got = read_image(tmp_path / "l.png", rgb=True)
    assert got.shape == rgb.shape and all(np.array_equal(got[..., i], rgb[..., 2]) for i in range(3))
    assert np.array_equal(read_image(tmp_path / "c.png", rgb=True), rgb)
    a, b = read_images([tmp_path / "l.png", tmp_path / "c.png"], rgb=True)
    assert np.array_equal(a, got) and np.array_equal(b, rgb)


def test_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "junk.jpg").write_bytes(b"not an image")
    with pytest.raises(InputFileError, match=r"junk\.jpg: unreadable image"):
        read_images([tmp_path / "junk.jpg"])
    (tmp_path / "junk.tif").write_bytes(b"not an image")
    with pytest.raises(InputFileError, match=r"junk\.tif: unreadable image"):
        read_images([tmp_path / "junk.tif"])


def test_read_images_of_a_single_path_or_an_array_says_what_it_expects(tmp_path: Path, rgb) -> None:
    """A single path was walked character by character ('/: not a regular file'), an array
    given to read_image reached pathlib's TypeError; any iterable of paths is fine."""
    Image.fromarray(rgb).save(tmp_path / "c.png")
    for one in (str(tmp_path / "c.png"), tmp_path / "c.png"):
        with pytest.raises(TypeError, match=r"read_images expects a list of paths, got the single path '.*c\.png'"):
            read_images(one)
    with pytest.raises(TypeError, match=r"expected an image file path \(str or os.PathLike\), got ndarray"):
        read_image(rgb)
    with pytest.raises(TypeError, match="got ndarray"):
        read_images(rgb)
    assert np.array_equal(read_images(p for p in [tmp_path / "c.png"])[0], rgb)


def test_a_floating_point_tiff_is_named_as_such(tmp_path: Path) -> None:
    """Pillow cannot open float RGB TIFFs: the message says what the file holds and what works."""
    import tifffile

    tifffile.imwrite(tmp_path / "f.tif", np.random.default_rng(0).random((8, 9, 3)).astype(np.float32), photometric="rgb")
    with pytest.raises(InputFileError, match=r"f\.tif: floating-point TIFF \(float32, shape \(8, 9, 3\)\) is not "
                                             r"supported: save the shots as 8- or 16-bit"):
        read_source_set([tmp_path / "f.tif", tmp_path / "f.tif"])


def test_a_16_bit_cmyk_tiff_is_refused_not_read_as_a_negative(tmp_path: Path) -> None:
    """Its first three samples (C, M, Y) were taken for R, G, B: a negative, exit 0."""
    import tifffile

    x = np.random.default_rng(0).integers(0, 65536, (40, 60, 4), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "c.tif", x, photometric="separated")
    with pytest.raises(InputFileError, match=r"c\.tif: 16-bit TIFF in colour space SEPARATED is not supported: "
                                             r"save the shots as RGB or gray"):
        read_images([tmp_path / "c.tif"])
    tifffile.imwrite(tmp_path / "rgba.tif", x, photometric="rgb", extrasamples=[2])  # RGB + alpha: read
    assert np.array_equal(read_images([tmp_path / "rgba.tif"])[0], np.round(x[..., :3] / 65535 * 255).astype(np.uint8))


def test_a_16_bit_gray_alpha_tiff_is_read_as_16_bit_gray(tmp_path: Path) -> None:
    """What Photoshop and GIMP write for gray with transparency: Pillow cannot identify it (it
    was 'unreadable image (UnidentifiedImageError ...)'); read with tifffile as 16-bit gray,
    alpha dropped, orientation applied, its ICC profile kept."""
    import tifffile
    from PIL import ImageCms

    gray_icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    gray_icc = gray_icc[:16] + b"GRAY" + gray_icc[20:]
    rng = np.random.default_rng(0)
    g = rng.integers(0, 65536, (30, 40), dtype=np.uint16)
    alpha = np.zeros_like(g)  # fully transparent: still not the gray
    tifffile.imwrite(tmp_path / "ga.tif", np.dstack([g, alpha]), photometric="minisblack", extrasamples=[2],
                     metadata=None, extratags=[(34675, "B", len(gray_icc), gray_icc, True)])
    tifffile.imwrite(tmp_path / "ga6.tif", np.dstack([g, alpha]), photometric="minisblack", extrasamples=[2],
                     metadata=None, extratags=[(274, "H", 1, 6, True)])  # turn right to view
    tifffile.imwrite(tmp_path / "gap.tif", np.stack([g, alpha]), photometric="minisblack", extrasamples=[2],
                     planarconfig="separate", metadata=None)
    src = read_source_set([tmp_path / "ga.tif", tmp_path / "ga6.tif", tmp_path / "gap.tif"])
    want = np.round(g / 65535 * 255).astype(np.uint8)
    assert np.array_equal(src.images[0], want) and src.bits == 16
    assert np.array_equal(src.full[0], g) and np.array_equal(src.full[2], g)
    assert np.array_equal(src.full[1], np.rot90(g, -1))
    assert src.icc == gray_icc
    assert np.array_equal(read_image(tmp_path / "ga.tif"), want)
    tifffile.imwrite(tmp_path / "f.tif", np.dstack([g, alpha]).astype(np.float32), photometric="minisblack",
                     extrasamples=[2], metadata=None)
    with pytest.raises(InputFileError, match=r"f\.tif: floating-point TIFF \(float32"):
        read_image(tmp_path / "f.tif")


def test_an_8_bit_gray_tiff_with_associated_alpha_reads_as_gray_unpremultiplied(tmp_path: Path) -> None:
    """Gray + associated (premultiplied) alpha, Pillow's mode "La": "conversion from La to L
    not supported" was an internal error. It reads as gray, the alpha divided out (as Pillow
    does for RGBa) and dropped; image_info says gray."""
    import tifffile

    from bafusion.io import image_info

    gray = np.array([[100, 200, 50], [10, 0, 255]], np.uint8)
    alpha = np.array([[255, 128, 0], [255, 64, 255]], np.uint8)
    stored = np.round(gray.astype(float) * alpha / 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "la.tif", np.dstack([stored, alpha]), photometric="minisblack",
                     planarconfig="contig", extrasamples=["assocalpha"])
    got = read_image(tmp_path / "la.tif")
    assert got.shape == gray.shape and got.dtype == np.uint8
    seen = alpha > 0
    assert np.abs(got[seen].astype(int) - gray[seen]).max() <= 2  # un-premultiplied (rounding of the stored)
    assert image_info(tmp_path / "la.tif").gray


def test_a_16_bit_tiff_with_associated_alpha_reads_unpremultiplied(tmp_path: Path) -> None:
    """16-bit RGB or gray + associated (premultiplied, ExtraSamples 1) alpha was read as
    stored: darkened where alpha < 1 (half as bright at half opacity), unlike an 8-bit one,
    which Pillow un-premultiplies. The samples are divided by alpha (65535 opaque), rounded,
    as the 8-bit ones are; alpha 0 keeps its (zero) samples; unassociated alpha is untouched."""
    import tifffile

    rng = np.random.default_rng(3)
    colour = rng.integers(0, 65536, (20, 30, 3)).astype(np.uint16)
    alpha = rng.integers(1, 65536, (20, 30)).astype(np.uint16)
    alpha[0, :5] = 0
    alpha[1, :5] = 65535
    colour[0, :5] = 0  # premultiplied by 0: nothing to recover
    stored = np.round(colour.astype(float) * alpha[..., None] / 65535).astype(np.uint16)
    # the exact inverse of the stored samples (what a reader can recover), clipped, alpha 0: 0
    want = np.where(alpha[..., None] > 0, np.round(stored * 65535.0 / np.maximum(alpha, 1)[..., None]), 0)
    want = np.clip(want, 0, 65535).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb.tif", np.dstack([stored, alpha]), photometric="rgb", extrasamples=[1])
    tifffile.imwrite(tmp_path / "rgbp.tif", np.moveaxis(np.dstack([stored, alpha]), -1, 0), photometric="rgb",
                     extrasamples=[1], planarconfig="separate")
    tifffile.imwrite(tmp_path / "gray.tif", np.dstack([stored[..., 1], alpha]), photometric="minisblack",
                     extrasamples=[1])
    tifffile.imwrite(tmp_path / "un.tif", np.dstack([stored, alpha]), photometric="rgb", extrasamples=[2])
    src = read_source_set([tmp_path / "rgb.tif", tmp_path / "rgbp.tif", tmp_path / "gray.tif",
                           tmp_path / "un.tif"], metadata=False)
    assert src.full is not None
    assert np.array_equal(src.full[0], want) and np.array_equal(src.full[1], want)
    assert np.array_equal(src.full[2], want[..., 1])
    assert np.array_equal(src.full[3], stored)  # unassociated: the colour as stored
    assert np.array_equal(src.images[0], np.round(want / 65535 * 255).astype(np.uint8))
    assert np.array_equal(read_image(tmp_path / "gray.tif"), np.round(want[..., 1] / 65535 * 255).astype(np.uint8))


def test_a_mode_pillow_cannot_convert_is_named_not_an_internal_error(tmp_path: Path, monkeypatch) -> None:
    """A ValueError of Pillow's convert (after the file was read) names the file."""
    Image.fromarray(np.zeros((4, 5, 3), np.uint8)).save(tmp_path / "c.png")

    def refuse(self, mode=None, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202 - Pillow's signature
        raise ValueError(f"conversion from {self.mode} to {mode} not supported")

    monkeypatch.setattr(Image.Image, "convert", refuse)
    with pytest.raises(InputFileError, match=r"c\.png: .*conversion from RGB to RGB not supported"):
        read_image(tmp_path / "c.png")


def test_a_damaged_8_bit_tiff_is_called_unreadable_not_unsupported(tmp_path: Path) -> None:
    """A truncated 8-bit TIFF: tifffile still reads its header, but 8-bit samples are
    supported, so the message says the file is unreadable (not 'unsupported sample format')."""
    import tifffile

    full = tmp_path / "full.tif"
    tifffile.imwrite(full, np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8), photometric="rgb")
    data = full.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])  # tifffile writes the IFD first, then the samples
    with tifffile.TiffFile(cut) as tf:  # the header is still readable
        assert tf.pages[0].dtype == np.uint8
    with pytest.raises(InputFileError, match=r"cut\.tif: unreadable image") as info:
        read_images([cut])
    assert "unsupported" not in str(info.value)


def _tiff_with_text_strip_offsets(path: Path) -> None:
    """A 3x2 8-bit gray TIFF whose StripOffsets (an integer tag) is stored as ASCII text."""
    import struct

    w, h = 3, 2
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 2, 2, int.from_bytes(b"x\0\0\0", "little")), (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, w * h)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0" * 4
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + ifd + bytes(range(w * h)))


def test_a_tiff_with_an_integer_tag_stored_as_text_is_unreadable_not_an_internal_error(tmp_path: Path,
                                                                                      capsys) -> None:
    """Pillow's decoder raised TypeError ("'str' object cannot be interpreted as an integer"):
    an internal error of every command. Any error of Pillow's open/load is the file's."""
    from bafusion.cli import main
    from bafusion.io import image_info

    bad = tmp_path / "bad.png"  # a TIFF despite its name
    _tiff_with_text_strip_offsets(bad)
    with pytest.raises(InputFileError, match=r"bad\.png: unreadable image \(TypeError"):
        read_image(bad)
    with pytest.raises(InputFileError, match=r"bad\.png: unreadable image"):
        image_info(bad, decode=True)
    assert main(["metrics", str(bad), str(bad), str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.png: unreadable image" in err and "internal error" not in err


def test_a_png_chunk_longer_than_the_file_is_damaged_not_out_of_memory(tmp_path: Path) -> None:
    """An IDAT chunk declaring 0xFFFFFFFF bytes in a 200-byte file: Pillow reads the declared
    length at once, a MemoryError under a memory limit ("out of memory: try smaller images").
    The file is named damaged."""
    import os
    import subprocess
    import sys

    resource = pytest.importorskip("resource")
    good = tmp_path / "good.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (17, 23), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    at = data.index(b"IDAT") - 4
    bad = tmp_path / "big.png"
    bad.write_bytes(data[:at] + b"\xff\xff\xff\xff" + data[at + 4:])
    code = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({1 << 30}, {1 << 30}))\n"
            "from bafusion.io import read_image\n"
            "from bafusion.errors import InputFileError\n"
            f"try:\n    read_image({str(bad)!r})\nexcept InputFileError as e:\n    print(e)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "MemoryError" not in run.stderr, run.stderr[-2000:]
    assert "big.png: damaged PNG" in run.stdout and "4294967295" in run.stdout, run.stdout


def test_a_large_photo_and_damaged_exif_print_no_pillow_warning(tmp_path: Path, monkeypatch) -> None:
    """A photo between Pillow's bomb limit and twice it (90-179 MP by default: a 102 MP camera)
    is read without Pillow's "could be decompression bomb" warning, and EXIF cut short without
    its "Truncated File Read"; above twice the limit it is refused."""
    import warnings

    g = np.random.default_rng(0).integers(0, 256, (10, 10), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "big.png")
    (tmp_path / "big16.png").write_bytes(png16_bytes(g.astype(np.uint16) * 257))
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Canon" * 20, "EOS R5" * 10
    Image.fromarray(g).save(tmp_path / "cut.jpg", exif=exif.tobytes()[:-40])  # Pillow: "Truncated File Read"
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        src = read_source_set([tmp_path / "cut.jpg"])
    assert src.images[0].shape == g.shape
    assert [str(w.message) for w in seen] == []
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 60)  # 100 px: over the limit, under twice it
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert np.array_equal(read_image(tmp_path / "big.png"), g)
        assert np.array_equal(read_images([tmp_path / "big16.png"])[0], g)
        assert read_source_set([tmp_path / "big.png"]).exif is None
    assert [str(w.message) for w in seen] == []
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 40)
    with pytest.raises(InputFileError, match=r"big\.png: image too large to read"):
        read_image(tmp_path / "big.png")


# --------------------------------------------------------------------------------------
# reader: EXIF orientation


@pytest.mark.parametrize("orientation,turn", [(3, lambda a: a[::-1, ::-1]), (6, lambda a: np.rot90(a, -1)),
                                              (8, lambda a: np.rot90(a, 1))])
def test_exif_orientation_is_applied_at_8_and_16_bits(tmp_path: Path, rgb, orientation, turn) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(tmp_path / "o.png", exif=exif.tobytes())
    assert np.array_equal(read_image(tmp_path / "o.png"), turn(rgb))
    full = rgb.astype(np.uint16) * 257  # 16-bit colour: read with pypng, turned by bafusion
    (tmp_path / "o16.png").write_bytes(png16_bytes(full, exif=exif.tobytes()))
    assert np.array_equal(read_image(tmp_path / "o16.png"), turn(rgb))


def _odd_exif(orientation: int, other: tuple[int, int, int, bytes]) -> bytes:
    """An EXIF block (little-endian) of an Orientation tag and one ``other`` entry (tag, type,
    count, 4 value bytes) of a type Pillow reads but cannot write back."""
    import struct

    entries = [(0x0112, 3, 1, struct.pack("<HH", orientation, 0)), other]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHI", t, y, c) + v for t, y, c, v in entries)
    return b"Exif\0\0II*\0" + struct.pack("<I", 8) + ifd + b"\0" * 4


@pytest.mark.parametrize("other", [(0x011A, 2, 3, b"72\0\0"),  # XResolution as text: TypeError in Pillow
                                   (0x0100, 2, 3, b"ab\0\0")],  # ImageWidth as text: struct.error
                         ids=["xresolution-text", "imagewidth-text"])
def test_a_photo_whose_exif_pillow_cannot_rewrite_is_read_and_turned(tmp_path: Path, rgb, capsys, other) -> None:
    """A photo with an Orientation tag and another tag of the wrong type: Pillow's
    exif_transpose rewrites the EXIF and raised TypeError / struct.error, an "internal error"
    of ``fuse``, ``fuse-dir`` and ``metrics``. The pixels are read and turned by the
    orientation; the tag that cannot be written back is dropped from a fusion's EXIF with a note."""
    from bafusion.cli import main

    Image.fromarray(np.rot90(rgb, 1)).save(tmp_path / "odd.png", exif=_odd_exif(6, other))
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    assert np.array_equal(read_image(tmp_path / "odd.png"), rgb)  # turned by the orientation
    Image.fromarray(np.rot90(rgb, 1)).save(tmp_path / "odd.jpg", exif=_odd_exif(6, other))
    assert read_image(tmp_path / "odd.jpg").shape == rgb.shape
    src = read_source_set([tmp_path / "odd.png", tmp_path / "plain.png"])
    assert src.exif is not None and any("odd.png" in n and "EXIF" in n for n in src.notes)  # the rest kept
    kept = Image.Exif()
    kept.load(src.exif)
    from bafusion._version import __version__

    assert dict(kept) == {0x0112: 1, 0x0131: f"bafusion {__version__}"}  # Software: the output's
    odd, plain = str(tmp_path / "odd.jpg"), str(tmp_path / "plain.png")
    assert main(["metrics", odd, plain, plain, "--metrics", "QG"]) == 0


def _camera_exif_with(*malformed: int) -> bytes:
    """A camera's EXIF block (big-endian, as Pillow writes it): Make, Model, DateTime,
    Orientation 6, X/YResolution, an Exif sub-IFD (ExposureTime, FNumber, DateTimeOriginal) and
    a GPS one (GPSLatitudeRef, GPSAltitude), each ``malformed`` tag (a RATIONAL one) retyped as
    8 bytes of text, which Pillow reads but cannot write back."""
    import struct

    ex = Image.Exif()
    ex[0x010F], ex[0x0110], ex[0x0112], ex[0x0132] = "Canon", "EOS R5", 6, "2024:05:01 10:00:00"
    ex[0x011A], ex[0x011B], ex[0x0128] = 300.0, 300.0, 2
    ex[0x8769] = {0x829A: 0.004, 0x829D: 2.8, 0x9003: "2024:05:01 09:59:59"}
    ex[0x8825] = {0x0001: "N", 0x0006: 120.5}
    data = ex.tobytes()
    for tag in malformed:
        i = data.find(struct.pack(">HHI", tag, 5, 1))  # the RATIONAL entry
        assert i > 0
        data = data[:i] + struct.pack(">HHI", tag, 2, 8) + data[i + 8:]  # its 8 bytes (at its offset) as text
    return data


def test_a_malformed_exif_tag_is_dropped_and_the_rest_kept(tmp_path: Path, rgb) -> None:
    """One tag of a type Pillow cannot write back (XResolution as text in IFD0, GPSAltitude as
    text in the GPS sub-IFD) dropped the whole EXIF (date, camera, exposure) from the output.
    Now only those tags are dropped, each tried on its own; the note names them."""
    from bafusion.io import source_metadata

    Image.fromarray(rgb).save(tmp_path / "odd.jpg", exif=_camera_exif_with(0x011A, 0x0006))
    src = read_source_set([tmp_path / "odd.jpg"])
    assert src.exif is not None
    ex = Image.Exif()
    ex.load(src.exif)
    assert (ex[0x010F], ex[0x0110], ex[0x0132], ex[0x0112]) == ("Canon", "EOS R5", "2024:05:01 10:00:00", 1)
    assert ex[0x011B] == 300.0 and 0x011A not in ex
    sub = ex.get_ifd(0x8769)
    assert (sub[0x829A], sub[0x829D], sub[0x9003]) == (0.004, 2.8, "2024:05:01 09:59:59")
    assert ex.get_ifd(0x8825) == {0x0001: "N"}
    [note] = [n for n in src.notes if "EXIF" in n]
    assert "odd.jpg" in note and "XResolution" in note and "GPSAltitude" in note
    assert "the output carries the rest of its EXIF" in note
    assert source_metadata(tmp_path / "odd.jpg")[0] == src.exif


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
def test_fuse_of_a_photo_whose_exif_pillow_cannot_rewrite_drops_it_with_a_note(tmp_path: Path, rgb, tiny_nets,
                                                                                capsys, suffix) -> None:
    from bafusion.cli import main

    a = np.random.default_rng(2).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    Image.fromarray(a).save(tmp_path / "odd.jpg", exif=_odd_exif(6, (0x011A, 2, 3, b"72\0\0")))
    Image.fromarray(np.rot90(a, -1)).save(tmp_path / "plain.jpg")
    out = tmp_path / f"f{suffix}"
    assert main(["fuse", str(tmp_path / "odd.jpg"), str(tmp_path / "plain.jpg"), "-o", str(out),
                 "--model", str(tiny_nets), "--device", "cpu", "--force"]) == 0
    assert "odd.jpg" in capsys.readouterr().err
    with Image.open(out) as im:
        assert im.size == (24, 32)
        assert im.getexif().get(0x0112, 1) == 1


def test_metrics_command_reads_the_turned_pixels(tmp_path: Path, rgb, capsys) -> None:
    """One reader: ``bafusion metrics`` applies a file's EXIF orientation, as ``fuse`` does."""
    from bafusion.cli import main

    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned left, shown turned right: the pixels of ``a``
    a, b = rgb, np.roll(rgb, 2, axis=1)
    f = np.where(np.arange(a.shape[1]) < 4, 1, 0)[None, :, None] * a + (np.arange(a.shape[1]) >= 4)[None, :, None] * b
    Image.fromarray(np.rot90(a, 1)).save(tmp_path / "a-exif.png", exif=exif.tobytes())
    for name, img in (("a", a), ("b", b), ("f", f.astype(np.uint8))):
        Image.fromarray(img).save(tmp_path / f"{name}.png")
    outs = []
    for a_file in ("a-exif.png", "a.png"):
        capsys.readouterr()
        assert main(["metrics", str(tmp_path / a_file), str(tmp_path / "b.png"), str(tmp_path / "f.png"),
                     "--metrics", "QMI,QG", "--format", "json"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


def test_a_size_error_says_where_the_exif_orientation_swapped_width_and_height(tmp_path: Path, rgb, capsys) -> None:
    """"size 6x9 (WxH) differs from 9x6" puzzled a user checking the stored sizes: the error
    now says the orientation was applied and what the file stores (``fuse``'s and ``metrics``')."""
    from bafusion.cli import main
    from bafusion.io import check_same_sizes, image_info

    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(tmp_path / "a.jpg", exif=exif.tobytes())  # stored 9x6, read 6x9
    Image.fromarray(rgb).save(tmp_path / "b.png")
    info = image_info(tmp_path / "a.jpg")
    assert (info.width, info.height, info.stored, info.orientation) == (6, 9, (9, 6), 6)
    want = f"{tmp_path / 'a.jpg'}'s EXIF orientation 6 was applied (the file stores 9x6)"
    with pytest.raises(InputFileError, match=r"size 9x6 \(WxH\) differs from 6x9 of .*a\.jpg") as e:
        check_same_sizes([info, image_info(tmp_path / "b.png")])
    assert want in str(e.value)
    assert main(["metrics", str(tmp_path / "a.jpg"), str(tmp_path / "b.png"), str(tmp_path / "b.png")]) == 2
    err = capsys.readouterr().err
    assert "image sizes differ" in err and want in err and len(err.strip().splitlines()) == 1
    # the tag was applied: "its orientation tag may be missing" beside it said nothing true (the
    # pixels turned upright by software that kept the tag); an untagged swap still says "missing"
    assert "may be wrong" in str(e.value) and "its orientation tag may be missing" not in str(e.value)
    Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 0, 2))).save(tmp_path / "t.png")  # 6x9, untagged
    with pytest.raises(InputFileError, match=r"9x6 \(WxH\) differs from 6x9 .*its orientation tag may be missing$"):
        check_same_sizes([image_info(tmp_path / "t.png"), image_info(tmp_path / "b.png")])


def test_a_turned_shot_beside_an_applied_180_degree_orientation_does_not_say_the_tag_is_missing(
        tmp_path: Path, rgb) -> None:
    """A file whose EXIF orientation 3 (180 degrees) was applied, beside a shot turned by 90
    degrees, got "its orientation tag may be missing" (fuse, and --align's "the shot looks turned"
    of align.size_problem): it has one, and it may be the wrong one. Now the error names the
    applied tag and says a tag may be wrong or missing."""
    from bafusion.fusion.batch import check_alignable_sizes
    from bafusion.io import check_same_sizes, image_info

    exif = Image.Exif()
    exif[0x0112] = 3
    Image.fromarray(rgb).save(tmp_path / "a.jpg", exif=exif.tobytes())  # 9x6, turned 180 degrees when read
    Image.fromarray(np.ascontiguousarray(rgb.transpose(1, 0, 2))).save(tmp_path / "t.png")  # 6x9, untagged
    applied = f"{tmp_path / 'a.jpg'}'s EXIF orientation 3 was applied (it keeps the stored 9x6)"
    for check in (check_same_sizes, check_alignable_sizes):
        with pytest.raises(InputFileError) as e:
            check([image_info(tmp_path / "t.png"), image_info(tmp_path / "a.jpg")])
        said = str(e.value)
        assert applied in said and "wrong" in said and "its orientation tag may be missing" not in said, said



@pytest.mark.parametrize("orientation", [1, 3, 5, 6, 7, 8])
def test_image_info_of_a_turned_tiff_is_the_size_as_read(tmp_path: Path, orientation: int) -> None:
    """Pillow (13) gives a TIFF of orientation 5-8 its size as read (already swapped), which
    image_info swapped a second time: ``fuse`` refused a valid pair, saying the stored size
    backwards, while read_images, fuse-dir and metrics accepted it. Now image_info agrees with
    the reader for 8-bit TIFFs (Pillow), 16-bit ones (gray: Pillow; colour and gray + alpha:
    tifffile) and JPEGs, and ``stored`` is the file's ImageWidth x ImageLength."""
    import tifffile

    from bafusion.io import check_same_sizes, image_info, orientation_clause

    rng = np.random.default_rng(orientation)
    stored = {  # (H, W) = (6, 9) as stored
        "g8.tif": (rng.integers(0, 256, (6, 9), dtype=np.uint8), "minisblack", {}),
        "c8.tif": (rng.integers(0, 256, (6, 9, 3), dtype=np.uint8), "rgb", {}),
        "g16.tif": (rng.integers(0, 65536, (6, 9), dtype=np.uint16), "minisblack", {}),
        "c16.tif": (rng.integers(0, 65536, (6, 9, 3), dtype=np.uint16), "rgb", {}),
        "ga16.tif": (rng.integers(0, 65536, (6, 9, 2), dtype=np.uint16), "minisblack", {"extrasamples": [2]}),
    }
    for name, (a, photometric, kw) in stored.items():
        tifffile.imwrite(tmp_path / name, a, photometric=photometric, extratags=[(0x0112, "H", 1, orientation, True)],
                         **kw)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(stored["c8.tif"][0]).save(tmp_path / "c.jpg", exif=exif.tobytes())
    names = [*stored, "c.jpg"]
    infos = [image_info(tmp_path / n) for n in names]
    for name, info, img in zip(names, infos, read_images([tmp_path / n for n in names])):
        assert (info.height, info.width) == img.shape[:2], name
        assert info.stored == (9, 6) and info.orientation == orientation, name
        want = "" if orientation < 5 else f"orientation {orientation} was applied (the file stores 9x6)"
        assert want in orientation_clause(info), name
    check_same_sizes(infos)  # one size as read: no refusal
# --------------------------------------------------------------------------------------
# reader: files of several frames or pages; gray beside colour


def _frames(path: Path, frames: list[np.ndarray], kind: str) -> None:
    if kind == "tifffile16":  # a (N, H, W) uint16 stack: one page per shot
        import tifffile

        tifffile.imwrite(path, np.stack([f[..., 0].astype(np.uint16) * 257 for f in frames]), photometric="minisblack")
        return
    ims = [Image.fromarray(f) for f in frames]
    extra = {"lossless": True} if kind == "webp" else {}
    ims[0].save(path, save_all=True, append_images=ims[1:], **extra)


@pytest.mark.parametrize("kind,suffix,unit", [("pil", ".tif", "pages"), ("tifffile16", ".tif", "pages"),
                                              ("gif", ".gif", "frames"), ("webp", ".webp", "frames")])
def test_a_file_of_several_frames_is_noted_and_its_first_read(tmp_path: Path, rgb, capsys, kind, suffix,
                                                               unit) -> None:
    """A focus stack saved as one multi-page TIFF (or an animation) was fused, measured and
    evaluated from its first frame without a word: now a line names the file and its count."""
    from bafusion.cli import main
    from bafusion.io import frame_notes

    frames = [rgb, np.roll(rgb, 3, axis=1), 255 - rgb]
    multi = tmp_path / f"stack{suffix}"
    _frames(multi, frames, kind)
    Image.fromarray(rgb).save(tmp_path / "b.png")
    first = read_images([multi, tmp_path / "b.png"])[0]
    src = read_source_set([multi, tmp_path / "b.png"])
    assert np.array_equal(src.images[0], first)
    if kind == "pil":
        assert np.array_equal(first, rgb)  # the first page, as before
    want = f"{multi} holds 3 {unit}; only the first is used"
    assert [n for n in src.notes if want in n], src.notes
    assert frame_notes([tmp_path / "b.png", multi]) == [n for n in src.notes if "holds" in n]
    assert read_source_set([tmp_path / "b.png", tmp_path / "b.png"]).notes == []
    capsys.readouterr()
    other = tmp_path / "b.png"
    if kind == "tifffile16":  # an unmarked 16-bit F beside an 8-bit source is refused by metrics: B and F 16-bit too
        other = tmp_path / "b16.png"
        Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(other)
    assert main(["metrics", str(multi), str(other), str(other), "--metrics", "QG"]) == 0
    err = capsys.readouterr().err
    assert f"bafusion metrics: {want}" in err and len(err.strip().splitlines()) == 1


def test_an_mpo_jpegs_preview_is_no_frame_to_note(tmp_path: Path, rgb) -> None:
    """Many cameras' JPEGs carry a preview in an MPF (Pillow: MPO, two frames): not a stack."""
    from bafusion.io import frame_notes, image_info

    Image.fromarray(rgb).save(tmp_path / "c.jpg", format="MPO", save_all=True,
                              append_images=[Image.fromarray(rgb[:3, :4])])
    info = image_info(tmp_path / "c.jpg")
    assert (info.format, info.frames) == ("MPO", 2)
    assert frame_notes([tmp_path / "c.jpg"]) == []


def test_gray_sources_beside_colour_ones_are_noted(tmp_path: Path, rgb) -> None:
    """A gray A and a colour B were fused into a patchwork (gray where taken from A) without a
    word: the source set now notes it, naming the gray and the colour files."""
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(rgb[..., 1]).save(tmp_path / "g.png")
    Image.fromarray(rgb[..., 1]).save(tmp_path / "g2.png")
    notes = read_source_set([tmp_path / "g.png", tmp_path / "c.png"]).notes
    assert notes == [f"{tmp_path / 'g.png'} is gray and {tmp_path / 'c.png'} colour: the result is gray where it "
                     "is taken from it (give the shots all in colour or all gray for a uniform result)"]
    three = read_source_set([tmp_path / "c.png", tmp_path / "g.png", tmp_path / "g2.png"]).notes
    assert len(three) == 1 and f"{tmp_path / 'g.png'}, {tmp_path / 'g2.png'} are gray and" in three[0]
    assert read_source_set([tmp_path / "g.png", tmp_path / "g2.png"]).notes == []
    assert read_source_set([tmp_path / "g.png", tmp_path / "c.png"], metadata=False).notes == []


# --------------------------------------------------------------------------------------
# reader: bit depth


def test_16_bit_file_alone_and_in_a_set(tmp_path: Path) -> None:
    v12 = np.array([[0, 1000, 4095]], np.uint16)  # 12-bit data in a 16-bit PNG
    v16 = np.array([[0, 30000, 65535]], np.uint16)
    (tmp_path / "a.png").write_bytes(png16_bytes(v12))
    (tmp_path / "b.png").write_bytes(png16_bytes(v16))
    (tmp_path / "m.png").write_bytes(png16_bytes(v12, sbit=12))
    alone = read_image(tmp_path / "a.png")  # a set of one: its own depth, 12 bits
    assert alone.tolist() == np.round(v12 / 4095 * 255).astype(np.uint8).tolist()
    a, b = read_images([tmp_path / "a.png", tmp_path / "b.png"])  # unmarked: scaled alike, 16 bits
    assert a.tolist() == np.round(v12 / 65535 * 255).astype(np.uint8).tolist()
    assert b.tolist() == np.round(v16 / 65535 * 255).astype(np.uint8).tolist()
    m, b2 = read_images([tmp_path / "m.png", tmp_path / "b.png"])  # marked sBIT 12: its own bits
    assert np.array_equal(m, alone) and np.array_equal(b2, b)


# --------------------------------------------------------------------------------------
# gray


def _matlab_rgb2gray(rgb: np.ndarray) -> np.ndarray:
    """MATLAB's order of operations: r*c0 + g*c1 + b*c2, rounded half away from zero."""
    x = rgb.astype(np.float64)
    s = x[..., 0] * RGB2GRAY[0] + x[..., 1] * RGB2GRAY[1] + x[..., 2] * RGB2GRAY[2]
    return np.clip(np.floor(s + 0.5), 0, 255).astype(np.uint8)


def test_gray_reference_values_of_matlab_rgb2gray() -> None:
    # MATLAB: rgb2gray(uint8(cat(3, [255 0 0 255 128], [0 255 0 255 64], [0 0 255 255 32]))))
    img = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255], [128, 64, 32]]], np.uint8)
    # 128*0.298936 + 64*0.587043 + 32*0.114021 = 38.264 + 37.571 + 3.649 = 79.483
    assert to_gray_u8(img).tolist() == [[76, 150, 29, 255, 79]]
    assert gray_float(img, rounded=True).tolist() == [[76.0, 150.0, 29.0, 255.0, 79.0]]
    assert gray_float(img)[0, 0] == pytest.approx(255 * 0.298936021293775, abs=1e-12)


def test_uint8_gray_equals_matlab_order_on_every_colour() -> None:
    """The matrix product and MATLAB's sequential sum differ by an ulp on some colours, but no
    uint8 colour's gray lies near a rounding tie: the rounded grays agree on all 2**24."""
    v = np.arange(1 << 24, dtype=np.uint32)
    for chunk in np.array_split(v, 16):
        rgb = np.stack([(chunk >> 16) & 255, (chunk >> 8) & 255, chunk & 255], -1).astype(np.uint8)
        rgb = rgb.reshape(-1, 1024, 3)
        assert np.array_equal(to_gray_u8(rgb), _matlab_rgb2gray(rgb))
        x = rgb.astype(np.float64)
        seq = x[..., 0] * RGB2GRAY[0] + x[..., 1] * RGB2GRAY[1] + x[..., 2] * RGB2GRAY[2]
        assert np.abs(gray_float(rgb) - seq).max() < 1e-12


def test_gray_float_by_blocks_of_rows_is_the_one_piece_product(monkeypatch: pytest.MonkeyPatch) -> None:
    """gray_float made a shot's whole float64 colour copy (576 MB at 24 MP, three times for
    ``--align``); it converts a block of rows at a time now, and must give the same bits as the
    one-piece product (shapes that split into uneven blocks, RGBA, float input)."""
    import bafusion.io.convert as convert

    rng = np.random.default_rng(5)
    shots = [rng.integers(0, 256, (1001, 757, 3), dtype=np.uint8), rng.integers(0, 256, (1001, 757, 4), dtype=np.uint8),
             rng.integers(0, 256, (3, 2, 3), dtype=np.uint8), rng.random((37, 53, 3)) * 255,
             rng.integers(0, 256, (0, 5, 3), dtype=np.uint8)]
    for block in (convert._DOT_BLOCK_BYTES, 3 * 8 * 757 * 7, 1):  # as shipped, 7 rows, one row
        monkeypatch.setattr(convert, "_DOT_BLOCK_BYTES", block)
        for x in shots:
            got = gray_float(x)
            assert got.dtype == np.float64 and got.shape == x.shape[:2]
            assert np.array_equal(got, x[..., :3].astype(np.float64) @ RGB2GRAY), (block, x.shape)
    import tracemalloc

    x = rng.integers(0, 256, (1000, 1000, 3), dtype=np.uint8)
    monkeypatch.setattr(convert, "_DOT_BLOCK_BYTES", 1 << 20)
    tracemalloc.start()
    try:
        gray_float(x)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 12e6, peak  # the 8 MB result and a block, not the 24 MB float64 colour copy


def test_gray_float_by_blocks_is_the_one_piece_product_in_any_memory_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """A shot not in C order (Fortran order: scipy.io.loadmat's arrays, ``numpy.asfortranarray``)
    whose height left a last block of one row: astype laid that row out otherwise and matmul took
    BLAS's path for it, so its bits differed from the one-piece product's (1048 rows of 2000 px,
    349 a block: the last row differed by 1e-13). Every order of the axes in memory, reversed and
    strided views, heights that leave one row over, blocks of one row asked for."""
    import itertools

    import bafusion.io.convert as convert

    rng = np.random.default_rng(7)
    cases = [(1048, 2000, 3, None)]  # as shipped: 349 rows a block, one row over
    for perm in itertools.permutations(range(3)):
        for h, w, c in [(2, 5, 3), (9, 4, 3), (35, 11, 4), (101, 37, 3)]:
            cases.append((h, w, c, perm))
    for h, w, c, perm in cases:
        if perm is None:
            shot = np.asfortranarray(rng.integers(0, 256, (h, w, c), dtype=np.uint8))
            blocks = (convert._DOT_BLOCK_BYTES,)
        else:
            stored = rng.integers(0, 256, tuple((h, w, c)[i] for i in perm), dtype=np.uint8)
            shot = stored.transpose(np.argsort(perm))  # (h, w, c), its axes in memory in perm's order
            blocks = (convert._DOT_BLOCK_BYTES, 3 * 8 * w * 2, 1)  # one piece, two rows, one row
        for block in blocks:
            monkeypatch.setattr(convert, "_DOT_BLOCK_BYTES", block)
            for x in (shot, shot[::-1], shot[:, ::-2]):
                want = x[..., :3].astype(np.float64) @ RGB2GRAY
                assert np.array_equal(gray_float(x), want), (block, perm, x.shape, x.strides)


def test_gray_of_gray_alpha_and_bad_shapes(rgb) -> None:
    g = rgb[..., 0]
    assert to_gray_u8(g) is not g and np.array_equal(to_gray_u8(g), g)
    assert np.array_equal(gray_float(g[..., None]), g.astype(np.float64))
    rgba = np.dstack([rgb, np.full(g.shape, 7, np.uint8)])
    assert np.array_equal(to_gray_u8(rgba), to_gray_u8(rgb))
    with pytest.raises(ValueError, match="shape"):
        gray_float(np.zeros((2, 2, 2)))


def test_to_uint8_rounds_half_away_and_clips() -> None:
    x = np.array([-3.0, -0.5, 0.49, 0.5, 1.5, 2.5, 254.5, 300.0])
    assert to_uint8(x).tolist() == [0, 0, 0, 1, 2, 3, 255, 255]


# --------------------------------------------------------------------------------------
# writer and mattes


@pytest.mark.parametrize("suffix", [".png", ".tif", ".bmp"])
def test_write_read_round_trip(tmp_path: Path, rgb, suffix: str) -> None:
    for img in (rgb, rgb[..., 1]):
        p = tmp_path / f"x{img.ndim}{suffix}"
        write_image(p, img)
        assert np.array_equal(read_image(p), img)


def test_16_bit_write_with_significant_bits_reads_as_its_8_bit_data(tmp_path: Path, rgb) -> None:
    v12 = np.round(rgb.astype(np.float64) * 4095 / 255).astype(np.uint16)
    write_image(tmp_path / "x.png", np.round(v12 / 4095 * 65535).astype(np.uint16), bits=12)
    assert np.array_equal(read_image(tmp_path / "x.png"), rgb)


def test_write_unknown_suffix_names_the_file(tmp_path: Path, rgb) -> None:
    with pytest.raises(UserError, match=r"x\.qqq: unknown image format"):
        write_image(tmp_path / "x.qqq", rgb)
    assert not list(tmp_path.iterdir())


def test_write_unknown_or_read_only_suffix_names_the_formats_it_writes(tmp_path: Path, rgb) -> None:
    """'o.xyz' said "use .png, .tif, .bmp or .jpg", leaving out .webp, which write_image
    documents; a format Pillow reads but cannot write (.psd) said "cannot write this image
    (shape (6, 9, 3)) as PSD: 'PSD'". Both name the formats of the writer's table, each of
    which writes and reads back."""
    use = r"\(use \.png, \.jpg, \.tif, \.webp, \.bmp"
    with pytest.raises(UserError, match=r"o\.xyz: unknown image format '\.xyz' " + use + ", or another format"):
        write_image(tmp_path / "o.xyz", rgb)
    with pytest.raises(UserError, match=r"o: unknown image format '\(no suffix\)'"):
        write_image(tmp_path / "o", rgb)
    with pytest.raises(UserError, match=r"o\.psd: cannot write PSD files \('\.psd'\): Pillow reads them but does "
                                        r"not write them " + use + r"\)$"):
        write_image(tmp_path / "o.psd", rgb)
    assert not list(tmp_path.iterdir())
    from bafusion.io import _USUAL_SUFFIX, _WRITTEN_METADATA

    assert list(_USUAL_SUFFIX) == list(_WRITTEN_METADATA)
    for suffix in _USUAL_SUFFIX.values():
        write_image(tmp_path / f"o{suffix}", rgb)
        assert read_image(tmp_path / f"o{suffix}").shape == rgb.shape, suffix


_SHORT_WRITE = r"""
import resource, signal, sys
import numpy as np
from bafusion.io import write_image
out, limit = sys.argv[1], int(sys.argv[2])
img = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit is cut short, then fails (EFBIG)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
for name, a in (("x.jpg", img), ("x.png", img), ("x.bmp", img), ("x.tif", img), ("h.tif", img.astype(np.uint16) * 257),
                ("h.png", img.astype(np.uint16) * 257)):
    try:
        write_image(f"{out}/{name}", a)
    except OSError as e:
        print(name, "raised", e.errno, e.filename)
    else:
        print(name, "written")
"""


def _run_limited(script: str, *args: object) -> list[str]:
    """Run ``script`` (which sets its own file-size limit) in a child Python with this tree's
    package; its stdout lines."""
    import os
    import subprocess
    import sys

    pytest.importorskip("resource")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def test_write_fails_on_a_short_write(tmp_path: Path) -> None:
    """A disk that fills up while a file is written cuts the write short: every format raises
    an OSError naming the output, and no file is left (a JPEG of quality 95, written by Pillow
    in one write() that ignores a short one, was cut off and reported as written). The short
    write is made by a file-size limit (RLIMIT_FSIZE), in a child process."""
    import errno

    lines = _run_limited(_SHORT_WRITE, tmp_path, "20000")
    assert len(lines) == 6, lines
    for line in lines:
        name, what, *rest = line.split()
        assert what == "raised", line
        assert int(rest[0]) in (errno.EFBIG, errno.ENOSPC) and rest[1] == str(tmp_path / name), line
    assert not list(tmp_path.iterdir())



_TIFF_TAIL = r"""
import os, resource, signal, sys
import numpy as np
from bafusion.io import write_image
out = sys.argv[1]
img = np.random.default_rng(0).integers(0, 65536, (100, 137, 3), dtype=np.uint16)
write_image(f"{out}/ref.tif", img)
full = os.path.getsize(f"{out}/ref.tif")
os.remove(f"{out}/ref.tif")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
for limit in (full - 1, full - 100, full - 3000):
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        write_image(f"{out}/h.tif", img)
    except OSError as e:
        print(limit, "raised", e.errno, e.filename)
    else:
        print(limit, "written", os.path.getsize(f"{out}/h.tif"))
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
"""


@pytest.mark.parametrize("bits", [None, 12, 16])
def test_a_16_bit_tiff_carries_the_exif_and_names_bafusion(tmp_path: Path, bits: int | None) -> None:
    """A 16-bit TIFF (written by tifffile) carried no EXIF: a raw converter's 16-bit export lost
    its camera, exposure, date and GPS in the fusion, and the file said Software 'tifffile.py'.
    It now holds the EXIF's camera tags in its first IFD, its Exif (with the Interoperability
    IFD: an Adobe RGB shot's R03) and GPS sub-IFDs, and Software as the EXIF states it
    (bafusion's without EXIF); read back by Pillow, tifffile and source_metadata (which took
    the Interoperability IFD's offset from a TIFF source as it stood, pointing into the output's
    block at whatever lay there), its pixels unchanged."""
    import tifffile

    from bafusion._version import __version__
    from bafusion.io import source_metadata

    ex = Image.Exif()
    ex[0x010F], ex[0x0110], ex[0x0131], ex[0x0132] = "Canon", "EOS R5", "bafusion 9", "2026:01:02 03:04:05"
    ex[0x8769] = {0x829A: 0.01, 0x8827: 400, 0xA001: 0xFFFF, 0xA005: {0x0001: "R03"}}
    ex[0x8825] = {0x0001: "N", 0x0002: (52.0, 13.0, 30.5)}
    img = np.random.default_rng(0).integers(0, 65536, (6, 7, 3)).astype(np.uint16)
    out = tmp_path / "f.tif"
    write_image(out, img, exif=ex.tobytes(), bits=bits, dpi=(300, 300))
    with Image.open(out) as im:
        got = im.getexif()
        assert (got.get(0x010F), got.get(0x0110), got.get(0x0131), got.get(0x0132)) == (
            "Canon", "EOS R5", "bafusion 9", "2026:01:02 03:04:05")
        assert got.get_ifd(0x8769).get(0x829A) == 0.01 and got.get_ifd(0x8769).get(0x8827) == 400
        assert got.get_ifd(0xA005).get(0x0001) == "R03"
        assert got.get_ifd(0x8825) == {0x0001: "N", 0x0002: (52.0, 13.0, 30.5)}
    with tifffile.TiffFile(out) as tf:
        assert tf.pages.first.tags["ExifTag"].value["ExposureTime"] == 0.01
        assert tf.is_ome == bool(bits)
        back = tf.asarray()
    if bits is None:
        assert np.array_equal(back, img)
    carried, _ = source_metadata(out)  # the fusion of a fusion: its EXIF carried on, R03 with it
    again = Image.Exif()
    again.load(carried)
    assert again.get_ifd(0xA005).get(0x0001) == "R03" and again.get_ifd(0x8769).get(0x829A) == 0.01
    write_image(tmp_path / "plain.tif", img, bits=bits)
    with tifffile.TiffFile(tmp_path / "plain.tif") as tf:
        assert tf.pages.first.tags["Software"].value == f"bafusion {__version__}"
        assert "ExifTag" not in tf.pages.first.tags


def test_an_8_bit_tiff_keeps_the_interoperability_ifd(tmp_path: Path) -> None:
    """Pillow's TIFF writer, given an EXIF block, wrote the Exif sub-IFD's Interoperability
    pointer with its offset within the block: in the TIFF it pointed at whatever lay there, so
    an Adobe RGB shot's fusion (ColorSpace uncalibrated, R03) lost its R03. It is now written
    whole, with the other tags, the GPS sub-IFD and the resolution."""
    ex = Image.Exif()
    ex[0x010F] = "Canon"
    ex[0x8769] = {0xA001: 0xFFFF, 0x829A: 0.01, 0xA005: {0x0001: "R03"}}
    ex[0x8825] = {0x0001: "N", 0x0002: (52.0, 13.0, 30.5)}
    img = _photo_like(16)
    write_image(tmp_path / "f.tif", img, exif=ex.tobytes(), dpi=(300, 300))
    with Image.open(tmp_path / "f.tif") as im:
        got = im.getexif()
        assert got.get(0x010F) == "Canon" and got.get_ifd(0x8769).get(0x829A) == 0.01
        assert got.get_ifd(0xA005) == {0x0001: "R03"}
        assert got.get_ifd(0x8825) == {0x0001: "N", 0x0002: (52.0, 13.0, 30.5)}
        assert [round(v) for v in im.info["dpi"]] == [300, 300]
        assert np.array_equal(np.asarray(im), img)


def test_write_of_a_16_bit_tiff_fails_when_its_last_bytes_are_lost(tmp_path: Path) -> None:
    """A 16-bit TIFF is written by tifffile straight to the file (not copied into memory), its
    image data by numpy's ``tofile`` through a C ``FILE`` whose closing flush is not checked: a
    disk full within the last few KB lost the file's end unsaid (the file was kept, a few bytes
    short). The size is checked: an OSError naming the output, no file left."""
    import errno

    lines = _run_limited(_TIFF_TAIL, tmp_path)
    assert len(lines) == 3, lines
    for line in lines:
        _, what, *rest = line.split()
        assert what == "raised", line
        assert int(rest[0]) in (errno.EFBIG, errno.ENOSPC) and rest[1] == str(tmp_path / "h.tif"), line
    assert not list(tmp_path.iterdir())


def test_write_of_a_16_bit_image_makes_no_copy_of_it(tmp_path: Path) -> None:
    """A 16-bit TIFF is written without a copy of the file in memory (it was encoded into a
    BytesIO: 278 MB more for a 6000x4000 colour image, 3 MB before), a 16-bit image to JPEG
    without a float64 copy (1.6 GB for that image): each less than the image's size; the
    8-bit values are those of ``scale_to_u8(v, 16)`` for every uint16 ``v``."""
    import tracemalloc

    from bafusion.io import scale_to_u8

    img = (np.arange(600, dtype=np.uint32)[:, None, None] * 97 + np.arange(700, dtype=np.uint32)[None, :, None] * 31
           + np.arange(3) * 7).astype(np.uint16)
    for suffix in (".tif", ".jpg"):
        write_image(tmp_path / f"warm{suffix}", img[:8, :8])  # the writer's lazy imports (tifffile) are not the write's memory
        tracemalloc.start()
        try:
            write_image(tmp_path / f"x{suffix}", img)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < img.nbytes * (0.25 if suffix == ".tif" else 0.75), (suffix, peak, img.nbytes)
    assert np.array_equal(read_image(tmp_path / "x.tif"), scale_to_u8(img.astype(np.float64), 16))
    every = np.arange(1 << 16, dtype=np.uint16).reshape(256, 256)
    write_image(tmp_path / "e.bmp", every)
    assert np.array_equal(read_image(tmp_path / "e.bmp"), scale_to_u8(every.astype(np.float64), 16))


def test_a_png_header_is_read_without_decoding_and_an_exif_after_the_pixels_is_found(
    tmp_path: Path, rgb, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's getexif() of a PNG decodes the whole image when no eXIf chunk precedes the
    pixel data (0.215 s for the "header" of a 24 MP PNG, 0.231 s for its full read): the
    chunks are walked instead. A PNG with its eXIf after the pixel data (orientation 6) still
    gets the size it is read with (a size check on the stored size refused a pair the read
    would take), its EXIF carried."""
    from PIL import ImageFile

    from bafusion.io import _png_chunk, image_info, source_metadata

    Image.fromarray(rgb).save(tmp_path / "plain.png")
    ex = Image.Exif()
    ex[0x0112], ex[0x010F] = 6, "Cam"
    data = (tmp_path / "plain.png").read_bytes()
    (tmp_path / "late.png").write_bytes(data[:-12] + _png_chunk(b"eXIf", ex.tobytes()[6:]) + data[-12:])
    loads = []
    load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: (loads.append(1) if self.tile else None, load(self))[1])
    plain = image_info(tmp_path / "plain.png")
    assert (plain.width, plain.height, plain.orientation) == (9, 6, 1)
    assert source_metadata(tmp_path / "plain.png") == (None, None)
    assert not loads
    late = image_info(tmp_path / "late.png")
    assert (late.width, late.height, late.orientation) == (6, 9, 6)
    assert read_image(tmp_path / "late.png").shape == (9, 6, 3)
    exif = source_metadata(tmp_path / "late.png")[0]
    assert exif is not None and b"Cam" in exif

@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_write_refuses_other_types_and_squeezes_one_channel(tmp_path: Path, rgb, suffix: str) -> None:
    """Pillow got float RGB and int64 ('Cannot handle this data type'), float gray
    ('cannot write mode F as PNG'; a .tif was written as a float TIFF) and (H, W, 1) (a crash):
    now (H, W, 1) is gray and any type but uint8/uint16 an error naming the file, before
    anything is written."""
    for img, kind in ((rgb * 1.0, "float64"), (rgb[..., 0].astype(np.float32), "float32"),
                      (rgb.astype(np.int64), "int64"), (rgb > 100, "bool")):
        with pytest.raises(UserError, match=rf"x{suffix}: uint8 or uint16 image expected, got {kind}"):
            write_image(tmp_path / f"x{suffix}", img)
        assert not list(tmp_path.iterdir())
    write_image(tmp_path / f"g{suffix}", rgb[..., 1:2])
    assert np.array_equal(read_image(tmp_path / f"g{suffix}"), rgb[..., 1])


def test_matte_rules(tmp_path: Path, rgb) -> None:
    g = rgb[..., 0]
    Image.fromarray(np.dstack([g, g, g])).save(tmp_path / "m.png")
    assert np.array_equal(read_matte(tmp_path / "m.png"), g)
    pal = Image.fromarray(g // 16, mode="P")  # a gray palette: its colours, not its indices, are the matte
    pal.putpalette([v * 17 for v in range(16) for _ in range(3)])
    pal.save(tmp_path / "p.png")
    assert np.array_equal(read_matte(tmp_path / "p.png"), (g // 16) * 17)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(InputFileError, match=r"c\.png: matte is not gray"):
        read_matte(tmp_path / "c.png")


@pytest.mark.parametrize("shape", [(4, 10), (3, 7), (20, 30)])
def test_a_short_16_bit_gray_alpha_tiff_is_not_taken_for_planar(tmp_path: Path, shape: tuple[int, int]) -> None:
    # a guess by shape (first axis 3 or 4 long) moved the axes of a 4 px tall (4, 10, 2) image
    import tifffile

    g = np.random.default_rng(1).integers(0, 65536, shape, dtype=np.uint16)
    tifffile.imwrite(tmp_path / "ga.tif", np.dstack([g, g]), photometric="minisblack", extrasamples=[2],
                     metadata=None)
    src = read_source_set([tmp_path / "ga.tif"])
    assert np.array_equal(src.full[0], g)


def test_an_empty_file_is_called_empty(tmp_path: Path) -> None:
    # it said "unreadable image (UnidentifiedImageError: cannot identify image file
    # <_io.BufferedReader name='B0.jpg'>)": Python's internals, not the problem
    empty = tmp_path / "B0.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InputFileError) as e:
        read_image(empty)
    assert "empty file" in str(e.value) and "B0.jpg" in str(e.value) and "BufferedReader" not in str(e.value)


@pytest.mark.parametrize("shape", [(6, 9), (6, 9, 3), (6, 9, 4)])
def test_reading_a_16_bit_png_closes_its_file(tmp_path: Path, shape: tuple[int, ...]) -> None:
    """A 16-bit colour PNG (read with pypng, by file name) left its file open: a
    ``ResourceWarning: unclosed file`` once the reader was collected."""
    import gc
    import warnings

    x = (np.arange(np.prod(shape)).reshape(shape) * 997 % 65536).astype(np.uint16)
    p = tmp_path / "x.png"
    write_image(p, x)
    gc.collect()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        read_source_set([p])
        read_image(p)
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_alpha_to_a_format_without_it_is_a_clear_error(tmp_path: Path, rgb, dtype) -> None:
    """``write_image(rgba, "x.jpg")`` raised Pillow's bare 'OSError: cannot write mode RGBA as
    JPEG' (gray + alpha: the same for .jpg and .bmp); now an error naming the file and the
    problem, before anything is written. Formats that hold alpha keep it."""
    scale = 257 if dtype == np.uint16 else 1
    rgba = (np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)]).astype(dtype) * scale).astype(dtype)
    la = np.ascontiguousarray(rgba[..., [1, 3]])
    for img, suffix, keep in ((rgba, ".jpg", r"img\[\.\.\., :3\]"), (la, ".jpg", r"img\[\.\.\., 0\]"),
                              (la, ".bmp", r"img\[\.\.\., 0\]")):
        fmt = "JPEG" if suffix == ".jpg" else "BMP"
        with pytest.raises(UserError, match=rf"x{suffix}: {fmt} cannot store an alpha channel \(image of shape "
                                            rf"\(6, 9, {img.shape[2]}\)\): pass the image without it \({keep}\)"):
            write_image(tmp_path / f"x{suffix}", img)
        assert not list(tmp_path.iterdir())
    # the formats that hold alpha write it and read back without it, 16-bit gray + alpha too
    # (a 16-bit PNG of it was written as RGBA rows: unreadable; a 16-bit TIFF as 6 pages of 9 x 2)
    for img in (rgba, la):
        for suffix in (".png", ".tif") + ((".bmp",) if img is rgba else ()):
            p = tmp_path / f"ok{img.shape[2]}{suffix}"
            write_image(p, img)
            assert np.array_equal(read_image(p), rgb if img is rgba else rgb[..., 1]), p.name
        p = tmp_path / f"ok{img.shape[2]}.webp"  # lossless: read back exactly (gray + alpha as RGBA)
        write_image(p, img)
        back = read_image(p)
        assert np.array_equal(back, rgb) if img is rgba else all(
            np.array_equal(back[..., c], rgb[..., 1]) for c in range(3)), p.name
    # any other mode a Pillow format cannot write: named, not Pillow's bare OSError
    with pytest.raises(UserError, match=r"x\.xbm: cannot write this image \(shape \(6, 9, 3\)\) as XBM: cannot "
                                        "write mode RGB"):
        write_image(tmp_path / "x.xbm", rgb)


def test_a_file_pillow_cannot_identify_is_said_without_python_internals(tmp_path: Path) -> None:
    """Text saved as .png said "unreadable image (UnidentifiedImageError: cannot identify image
    file <_io.BufferedReader name='bad.png'>)"; it says what is wrong, in words."""
    bad = tmp_path / "bad.png"
    bad.write_text("hello\n")
    for read in (read_image, lambda p: read_images([p])):
        with pytest.raises(InputFileError) as e:
            read(bad)
        said = str(e.value)
        assert "bad.png: unreadable image: not an image file Pillow can read" in said
        assert "BufferedReader" not in said and "UnidentifiedImageError" not in said


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif", ".bmp"])
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_sources_resolution_is_carried_to_every_output_format(tmp_path: Path, suffix, dtype) -> None:
    """A 300 dpi first source gave outputs with no resolution (JPEG without density, PNG without
    pHYs, an 8-bit TIFF Pillow read as 1 dpi, a 16-bit one 1/1 of no unit)."""
    from bafusion.io import read_source_set, source_dpi, write_image

    rgb = np.random.default_rng(0).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    src = tmp_path / f"a{suffix}"
    Image.fromarray(rgb).save(src, dpi=(300, 300))
    assert source_dpi(src) == (300.0, 300.0)  # (PNG and BMP store pixels per metre: 299.9994 read back)
    Image.fromarray(rgb).save(tmp_path / f"96{suffix}", dpi=(96, 96))  # 3780 per metre: 96.0119 was carried on
    assert source_dpi(tmp_path / f"96{suffix}") == (96.0, 96.0)
    s = read_source_set([src, src])
    assert s.dpi == (300.0, 300.0)
    out = tmp_path / f"out{suffix}"
    img = rgb.astype(np.uint16) * 257 if dtype == np.uint16 else rgb
    write_image(out, img, dpi=s.dpi)
    assert source_dpi(out) == (300.0, 300.0)
    with Image.open(out) as im:
        assert im.info.get("dpi") is not None and round(im.info["dpi"][0]) == 300


def test_a_tiffs_resolution_unit_none_or_missing(tmp_path: Path) -> None:
    """A TIFF's resolution is carried by its unit: inch or centimetre as such, no
    ResolutionUnit tag as inch (the TIFF specification's default), unit 1 (no absolute unit:
    an aspect ratio) not at all. A TIFF with no resolution tags at all (Pillow writes none
    without ``dpi``) has none: Pillow reads it as 1 dpi, which was carried to the output (a
    fusion of two such shots was a 1 dpi PNG, JPEG or TIFF, printed a metre wide)."""
    import tifffile
    from PIL import TiffImagePlugin

    from bafusion.io import read_source_set, source_dpi, write_image

    g = np.random.default_rng(2).integers(0, 256, (10, 14), dtype=np.uint8)
    Image.fromarray(g).save(tmp_path / "none.tif")  # no resolution tags
    tags = TiffImagePlugin.ImageFileDirectory_v2()
    tags[282], tags[283] = 300.0, 300.0
    Image.fromarray(g).save(tmp_path / "nounit.tif", tiffinfo=tags)  # resolution, no unit tag
    tifffile.imwrite(tmp_path / "ratio.tif", g, resolution=(300, 300), resolutionunit="NONE", metadata=None)
    for name in ("none", "nounit", "ratio"):
        with tifffile.TiffFile(tmp_path / f"{name}.tif") as tf:
            assert (296 in tf.pages.first.tags) == (name == "ratio") and (282 in tf.pages.first.tags) == (name != "none")
    assert source_dpi(tmp_path / "nounit.tif") == (300.0, 300.0)
    assert source_dpi(tmp_path / "ratio.tif") is None
    assert source_dpi(tmp_path / "none.tif") is None
    for name in ("none", "ratio"):
        s = read_source_set([tmp_path / f"{name}.tif"] * 2)
        assert s.dpi is None
        for suffix in (".png", ".tif"):
            write_image(tmp_path / f"{name}-out{suffix}", g, dpi=s.dpi, exif=s.exif)
            with Image.open(tmp_path / f"{name}-out{suffix}") as im:
                assert im.info.get("dpi") is None, f"{name} -> {suffix}: {im.info.get('dpi')}"
            assert source_dpi(tmp_path / f"{name}-out{suffix}") is None


@pytest.mark.parametrize("exif", [False, True])
def test_an_output_of_no_resolution_states_none_in_every_format(tmp_path: Path, exif: bool) -> None:
    """Written without a resolution (its first source stated none), a .bmp claimed 96 dpi
    (Pillow's default: read back as 96.01 dpi by Pillow and by source_dpi, and carried on) and
    an 8-bit .tif was read by Pillow as 1 dpi (no resolution tags). Every output format fuse
    accepts now states none: Pillow reads no dpi, except its 72 dpi fallback for a JPEG with
    EXIF (which no file can avoid: a JPEG source of that EXIF reads 72 too), and source_dpi
    reads none."""
    from bafusion.io import source_dpi, write_image

    rgb = np.random.default_rng(3).integers(0, 256, (12, 16, 3), dtype=np.uint8)
    ex = Image.Exif()
    ex[0x010F] = "Canon"
    for suffix, dtype in ((".png", np.uint8), (".png", np.uint16), (".jpg", np.uint8), (".tif", np.uint8),
                          (".tif", np.uint16), (".bmp", np.uint8)):
        out = tmp_path / f"o-{np.dtype(dtype).name}{suffix}"
        write_image(out, rgb.astype(dtype) * (257 if dtype == np.uint16 else 1), exif=ex.tobytes() if exif else None)
        with Image.open(out) as im:
            pillow = im.info.get("dpi")
        assert pillow == ((72, 72) if exif and suffix == ".jpg" else None), (out.name, pillow)
        assert source_dpi(out) is None, out.name
    src = tmp_path / "src.jpg"
    Image.fromarray(rgb).save(src, exif=ex.tobytes())
    with Image.open(src) as im:
        assert im.info.get("dpi") == (72, 72)  # Pillow's own fallback for the source alike


def _jpeg_with(path: Path, res: dict[int, object] | None, *, jfif: bool = True, **save) -> Path:
    """A small JPEG with an EXIF of a camera make and the resolution tags ``res`` (None: no
    EXIF); without its JFIF (APP0) segment when not ``jfif``, as cameras write them."""
    exif = None
    if res is not None:
        ex = Image.Exif()
        ex[0x010F] = "Canon"
        for tag, v in res.items():
            ex[tag] = v
        exif = ex.tobytes()
    Image.fromarray(np.full((8, 10, 3), 90, np.uint8)).save(path, **({"exif": exif} if exif else {}), **save)
    if not jfif:
        data = path.read_bytes()
        assert data[2:4] == b"\xff\xe0"
        path.write_bytes(data[:2] + data[4 + int.from_bytes(data[4:6], "big"):])
    return path


def test_a_jpegs_resolution_is_what_it_states_not_pillows_72_dpi(tmp_path: Path) -> None:
    """A JPEG whose EXIF has no XResolution/YResolution (JFIF density of no unit, or no JFIF)
    was read as 72 dpi (Pillow's fallback for a JPEG with EXIF) and the output claimed 72
    dpi; one with no ResolutionUnit (inch, the EXIF default) too; and YResolution was taken
    from XResolution. Now the EXIF's resolution as stated, none where it states none."""
    from bafusion.io import read_source_set, source_dpi, write_image

    X, Y, U = 0x011A, 0x011B, 0x0128
    cases = {
        "exif-nores": (_jpeg_with(tmp_path / "a.jpg", {}), None),
        "camera-nores": (_jpeg_with(tmp_path / "b.jpg", {}, jfif=False), None),
        "no-unit": (_jpeg_with(tmp_path / "c.jpg", {X: 300.0, Y: 300.0}, jfif=False), (300.0, 300.0)),
        "x-and-y": (_jpeg_with(tmp_path / "d.jpg", {X: 300.0, Y: 150.0, U: 2}), (300.0, 150.0)),
        "cm": (_jpeg_with(tmp_path / "e.jpg", {X: 118.11, Y: 118.11, U: 3}), (300.0, 300.0)),
        "unit-none": (_jpeg_with(tmp_path / "f.jpg", {X: 2.0, Y: 1.0, U: 1}), None),
        "x-only": (_jpeg_with(tmp_path / "g.jpg", {X: 300.0, U: 2}), (300.0, 300.0)),  # square pixels (as Pillow)
        "jfif-dpi": (_jpeg_with(tmp_path / "h.jpg", {}, dpi=(200, 200)), (200.0, 200.0)),
        "no-exif": (_jpeg_with(tmp_path / "i.jpg", None), None),
    }
    got = {name: source_dpi(p) for name, (p, _) in cases.items()}
    assert got == {name: want for name, (_, want) in cases.items()}
    s = read_source_set([tmp_path / "a.jpg"] * 2)
    assert s.dpi is None
    write_image(tmp_path / "out.jpg", s.images[0], dpi=s.dpi, exif=s.exif)
    with Image.open(tmp_path / "out.jpg") as im:
        assert im.info.get("jfif_unit") == 0  # the output states no resolution either
        assert 0x011A not in im.getexif()


def test_a_16_bit_tiffs_resolution_is_read_and_written(tmp_path: Path) -> None:
    import tifffile

    from bafusion.io import read_source_set, write_image

    a = np.random.default_rng(1).integers(0, 65535, (10, 14, 3), dtype=np.uint16)
    src = tmp_path / "a.tif"
    tifffile.imwrite(src, a, photometric="rgb", resolution=(120, 120), resolutionunit="CENTIMETER", metadata=None)
    s = read_source_set([src])
    assert s.dpi is not None and s.dpi == pytest.approx((304.8, 304.8))
    out = tmp_path / "out.tif"
    write_image(out, s.full[0], dpi=s.dpi)
    with tifffile.TiffFile(out) as tf:
        tags = tf.pages.first.tags
        assert tags[296].value == 2 and tags[282].value[0] / tags[282].value[1] == pytest.approx(304.8)


def test_an_exif_too_large_for_a_jpeg_loses_its_makernote_then_its_largest_tags_and_says_so(tmp_path: Path) -> None:
    """EXIF over 64 KB (a PNG or TIFF source's MakerNote) was left out of a JPEG whole, unsaid."""
    from bafusion.io import fit_jpeg_exif, write_image

    ex = Image.Exif()
    ex[0x010F] = "TestCam"
    ex.get_ifd(0x8769)[0x927C] = b"\x01" * 70000
    ex.get_ifd(0x8769)[0x9003] = "2024:05:01 10:11:12"
    big = ex.tobytes()
    assert fit_jpeg_exif(big, tmp_path / "f.png") == (big, None)  # only a JPEG has the limit
    small, note = fit_jpeg_exif(big, tmp_path / "f.jpg")
    assert small is not None and len(small) <= 65533
    assert note and "MakerNote" in note and "f.jpg" in note
    out = tmp_path / "f.jpg"
    write_image(out, np.zeros((8, 8, 3), np.uint8), exif=small)
    with Image.open(out) as im:
        got = im.getexif()
        assert got.get(0x010F) == "TestCam" and got.get_ifd(0x8769).get(0x9003) == "2024:05:01 10:11:12"
    ex2 = Image.Exif()
    ex2[0x010F] = "TestCam"
    ex2.get_ifd(0x8769)[0x9286] = b"ASCII\0\0\0" + b"x" * 70000  # a UserComment: still too large without MakerNote
    small, note = fit_jpeg_exif(ex2.tobytes(), "f.jpeg")
    assert small is not None and len(small) <= 65533 and note and "UserComment" in note
    assert fit_jpeg_exif(b"Exif\0\0" + b"junk" * 20000, "f.jpg")[0] is None  # unreadable: left out, said
    assert "not written" in fit_jpeg_exif(b"Exif\0\0" + b"junk" * 20000, "f.jpg")[1]


def test_write_image_shortens_an_exif_too_large_for_a_jpeg_and_warns(tmp_path: Path) -> None:
    """The Python API's write_image left EXIF over 64 KB out of a JPEG whole and unsaid (the
    command line shortens it first and says so). It now shortens it as the command line does
    and warns, naming the file and what was dropped; a block it cannot shorten is left out,
    with a warning too. A PNG keeps it whole, without a warning."""
    import warnings

    from bafusion.io import ExifWarning

    ex = Image.Exif()
    ex[0x010F] = "TestCam"
    ex.get_ifd(0x8769)[0x927C] = b"\x01" * 70000
    big = ex.tobytes()
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.warns(ExifWarning) as caught:
        write_image(tmp_path / "f.jpg", img, exif=big)
    said = str(caught[0].message)
    assert "f.jpg" in said and "MakerNote" in said and "65533" in said, said
    assert caught[0].filename == __file__  # points at the caller
    assert issubclass(ExifWarning, UserWarning)
    with Image.open(tmp_path / "f.jpg") as im:
        got = im.getexif()
        assert got.get(0x010F) == "TestCam" and 0x927C not in got.get_ifd(0x8769)
    with pytest.warns(ExifWarning, match=r"g\.jpg: the EXIF given is not written"):
        write_image(tmp_path / "g.jpg", img, exif=b"Exif\0\0" + b"junk" * 20000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_image(tmp_path / "f.png", img, exif=big)
    with Image.open(tmp_path / "f.png") as im:
        assert len(im.getexif().get_ifd(0x8769)[0x927C]) == 70000


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_a_pngs_gama_and_chrm_are_read_and_written_to_a_png(tmp_path: Path, dtype) -> None:
    """A PNG source's gAMA/cHRM (colour described without an ICC profile) were dropped."""
    from PIL import PngImagePlugin

    from bafusion.io import read_source_set, source_png_colour, write_image

    rgb = np.random.default_rng(2).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    info = PngImagePlugin.PngInfo()
    info.add(b"gAMA", (100000).to_bytes(4, "big"))
    info.add(b"cHRM", b"".join(v.to_bytes(4, "big") for v in (31270, 32900, 64000, 33000, 21000, 71000, 15000, 6000)))
    src = tmp_path / "a.png"
    Image.fromarray(rgb).save(src, pnginfo=info)
    assert source_png_colour(tmp_path / "none.jpg") is None
    s = read_source_set([src])
    assert s.png_colour is not None and b"gAMA" in s.png_colour and b"cHRM" in s.png_colour
    out = tmp_path / "out.png"
    write_image(out, rgb.astype(np.uint16) * 257 if dtype == np.uint16 else rgb, png_colour=s.png_colour)
    with Image.open(out) as im:
        assert im.info.get("gamma") == 1.0
        assert im.info.get("chromaticity") == (0.3127, 0.329, 0.64, 0.33, 0.21, 0.71, 0.15, 0.06)
    assert read_source_set([out]).images[0].tolist() == rgb.tolist()


def test_to_gray_u8_by_its_table_equals_the_sum_on_every_colour() -> None:
    """uint8 colour goes through a table of every (r, g, b) (a camera pair's 26 s were float64
    temporaries): bit-identical to rounding the float64 sum in MATLAB's order, RGB and RGBA."""
    from bafusion.io import GRAY_TABLE_MIN_PIXELS, _gray_by_table, _matlab_sum, to_uint8

    v = np.arange(256, dtype=np.uint8)
    every = np.stack(np.meshgrid(v, v, v, indexing="ij"), -1).reshape(4096, 4096, 3)
    assert every.shape[0] * every.shape[1] >= GRAY_TABLE_MIN_PIXELS  # the table's path
    assert np.array_equal(to_gray_u8(every), to_uint8(_matlab_sum(every)))
    rgba = np.concatenate([every[:300, :200], np.full((300, 200, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(_gray_by_table(rgba), to_uint8(_matlab_sum(rgba)))
    assert np.array_equal(to_gray_u8(rgba), to_uint8(_matlab_sum(rgba)))  # small: the sum's path
    assert np.array_equal(to_gray_u8(every[:5, :7].astype(np.float64)), to_uint8(_matlab_sum(every[:5, :7])))


# --------------------------------------------------------------------------------------
# the formats fuse-dir takes


@pytest.mark.parametrize("suffix", __import__("bafusion.io", fromlist=["IMAGE_SUFFIXES"]).IMAGE_SUFFIXES)
def test_every_suffix_fuse_dir_takes_is_read_as_fuse_reads_it(tmp_path: Path, suffix: str) -> None:
    """Each of IMAGE_SUFFIXES (fuse-dir's shots) is a format fuse reads: written by Pillow, read
    by read_source_set; AVIF where this Pillow has libavif (else fuse-dir names the file it
    cannot read, as fuse does)."""
    from PIL import features

    if suffix == ".avif" and not features.check("avif"):
        pytest.skip("this Pillow reads no AVIF")
    img = np.random.default_rng(2).integers(0, 256, (16, 20, 3), dtype=np.uint8)
    p = tmp_path / f"x{suffix}"
    Image.fromarray(img).save(p)
    got = read_source_set([p, p]).images[0]
    assert got.shape == (16, 20, 3) and got.dtype == np.uint8


def test_fuse_dir_takes_the_photo_formats_that_fuse_reads() -> None:
    """A folder of .avif (or JPEG 2000, GIF, TGA, netpbm) shots fused nothing: fuse-dir listed only
    .png .jpg .jpeg .bmp .tif .tiff .webp, though fuse read these."""
    from PIL import features

    from bafusion.io import IMAGE_SUFFIXES

    wanted = {".jp2", ".jfif", ".jpe", ".gif", ".tga", ".ppm", ".pgm", ".qoi"} | ({".avif"} if features.check("avif")
                                                                                    else set())
    assert wanted <= set(IMAGE_SUFFIXES)
    assert not {".ico", ".icns", ".dds", ".xbm"} & set(IMAGE_SUFFIXES)  # icons and textures are no shots


def test_the_output_exif_names_bafusion_not_the_source_s_software_or_description(tmp_path: Path, rgb) -> None:
    """The first source's EXIF is carried to the output (camera, exposure, date, GPS); from a
    TIFF its ImageDescription and Software came too, so a fused JPEG said 'Software: tifffile.py'
    or a raw converter's name and its description ('{"shape": [6, 9, 3]}', 'converted from
    IMG_0001.CR2'), both about the source. Software now names bafusion, ProcessingSoftware and a
    TIFF's ImageDescription are dropped; a source without EXIF still gives an output without."""
    import tifffile

    from bafusion._version import __version__
    from bafusion.io import read_source_set, write_image

    tifffile.imwrite(tmp_path / "conv.tif", rgb, software="RawConv 3.1", description="converted from IMG_0001.CR2",
                     extratags=[(0x010F, "s", 0, "Canon", True), (0x0110, "s", 0, "EOS R5", True),
                                (0x0132, "s", 0, "2026:01:02 03:04:05", True)])
    tifffile.imwrite(tmp_path / "plain.tif", rgb)  # tifffile's own Software and ImageDescription only
    exif = Image.Exif()
    exif[0x010F], exif[0x0131], exif[0x000B] = "Canon", "Firmware 1.1", "Some Editor 2"
    exif.get_ifd(0x8769)[0x829A] = (1, 125)  # ExposureTime: kept
    Image.fromarray(rgb).save(tmp_path / "cam.jpg", exif=exif.tobytes())
    for name, make in (("conv.tif", "Canon"), ("cam.jpg", "Canon"), ("plain.tif", None)):
        src = read_source_set([tmp_path / name])
        for suffix in (".jpg", ".png", ".tif"):
            out = tmp_path / f"out-{Path(name).stem}{suffix}"
            write_image(out, src.images[0], exif=src.exif, icc=src.icc)
            with Image.open(out) as im:
                got = im.getexif()
                sub = got.get_ifd(0x8769)  # (read from the file)
            if make is None:
                assert src.exif is None and 0x010F not in got and got.get(0x0131) is None, (out.name, dict(got))
                assert 0x010E not in got, (out.name, dict(got))
                continue
            assert got.get(0x010F) == make and got.get(0x0131) == f"bafusion {__version__}", (out.name, dict(got))
            assert 0x010E not in got and 0x000B not in got, (out.name, dict(got))
            if name == "conv.tif":
                assert got.get(0x0110) == "EOS R5" and got.get(0x0132) == "2026:01:02 03:04:05", (out.name, dict(got))
            else:
                assert 0x829A in sub, (out.name, dict(got), sub)  # ExposureTime


def _iso_media(path: Path, major: bytes, compatible: bytes, rest: int = 3000) -> Path:
    """A damaged ISO media file: an ``ftyp`` box of ``major`` and ``compatible`` brands, then noise."""
    import struct

    path.write_bytes(struct.pack(">I4s4sI", 16 + len(compatible), b"ftyp", major, 0) + compatible
                     + np.random.default_rng(5).bytes(rest))
    return path


@pytest.mark.parametrize(("major", "compatible", "heic"), [
    (b"heic", b"mif1heic", True),  # a phone's HEIC
    (b"mif1", b"mif1heic", True),  # a HEIF image of the generic brand
    (b"heix", b"mif1heixmiaf", True),  # Canon's .hif
    (b"avif", b"avifmif1miafMA1B", False),  # an AVIF (libavif, Pillow): mif1 too
    (b"mif1", b"avifmif1miaf", False),  # an AVIF whose major brand is the generic one
    (b"avis", b"avismsf1miafMA1B", False),  # an AVIF image sequence: msf1 too
])
def test_a_damaged_avif_is_not_called_heic(tmp_path: Path, major: bytes, compatible: bytes, heic: bool) -> None:
    """A damaged AVIF file was refused as 'HEIC/HEIF file, which bafusion does not read: convert
    it ... with heif-convert': AVIF files carry the brands mif1/msf1 of HEIF too. The ftyp box's
    brands (major and compatible) are read: with avif or avis among them the file gets the
    unreadable-image error naming it and AVIF; a HEIC (named .jpg or .avif alike) is still said HEIC."""
    from bafusion.io import image_info, open_image

    for name in ("x.avif", "x.jpg"):
        path = _iso_media(tmp_path / name, major, compatible)
        for read in (open_image, image_info):
            with pytest.raises(InputFileError) as e:
                read(path)
            msg = str(e.value)
            assert msg.startswith(f"{path}: "), msg
            if heic:
                assert "HEIC/HEIF file, which bafusion does not read" in msg, msg
            else:
                assert "HEIC" not in msg and "unreadable image: " in msg and "AVIF file" in msg, msg


def test_tifffile_records_are_dropped_whichever_logger_tifffile_logs_on(tmp_path: Path, caplog) -> None:
    """tifffile 2023 (the lowest pyproject allows) logs on "tifffile.tifffile", and a filter
    on the logger "tifffile" does not see what its children propagate: the CLI printed
    "<tifffile.TiffFile 'z.tif'> contains no pages" twice beside its own error. Records of the
    whole tifffile hierarchy are dropped inside _tiff_file now, and only there."""
    import logging

    import tifffile

    from bafusion.io.formats import _tiff_file

    path = tmp_path / "g.tif"
    tifffile.imwrite(path, np.zeros((4, 4), np.uint8))
    caplog.set_level(logging.WARNING)
    names = ("tifffile", "tifffile.tifffile", "tifffile.tiffcomment")
    logging.getLogger("tifffile.tiffcomment")  # a child logger that exists by then is filtered too
    with _tiff_file(path):
        for name in names:
            logging.getLogger(name).warning("contains no pages")
    assert [r.name for r in caplog.records] == []
    for name in names:  # outside, tifffile's records are left alone
        logging.getLogger(name).warning("outside")
    assert [r.name for r in caplog.records] == list(names)


def test_a_tiff_with_no_pages_is_one_clear_error(tmp_path: Path, capsys, caplog) -> None:
    """A TIFF with no pages (tifffile.TiffWriter closed before any write: a header only) gave
    tifffile's own "<tifffile.TiffFile 'z.tif'> contains no pages" twice on stderr, without the
    command's prefix, then 'unreadable image: not an image file Pillow can read'. It is one
    error, prefixed, naming the file and what is wrong with it."""
    import logging

    import tifffile

    from bafusion.cli import main as cli_main

    empty = tmp_path / "z.tif"
    with tifffile.TiffWriter(empty):
        pass
    ok = tmp_path / "g.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(ok)
    caplog.set_level(logging.WARNING)
    assert cli_main(["metrics", str(empty), str(ok), str(ok)]) == 2
    err = capsys.readouterr().err
    assert [r.getMessage() for r in caplog.records if r.name.startswith("tifffile")] == []
    assert err.splitlines() == [f"bafusion metrics: error: {empty}: TIFF file with no image in it (no pages: an empty "
                                "or unfinished file)"], err


def _photo_like(n: int = 96) -> np.ndarray:
    """A smooth RGB image with a little noise (what lossy coding is for), uint8."""
    y, x = np.mgrid[0:n, 0:n]
    smooth = np.stack([(x + y) * 255 // (2 * n), x * 255 // n, y * 255 // n], axis=-1)
    noise = np.random.default_rng(5).integers(0, 4, smooth.shape)
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def test_a_webp_is_written_losslessly_and_lossy_only_with_a_quality(tmp_path: Path) -> None:
    """A .webp was written lossy at Pillow's default quality 80 (its pixels not the image's);
    now losslessly, exactly, and deterministically (also the colour under fully transparent
    pixels); ``quality`` gives a lossy, smaller file. JPEG keeps its quality 95 by default."""
    img = _photo_like()
    rgba = np.dstack([img, np.where(np.arange(96) % 3 == 0, 0, 255).astype(np.uint8)[None].repeat(96, 0)])
    for x, name in ((img, "rgb"), (rgba, "rgba")):
        p = tmp_path / f"{name}.webp"
        write_image(p, x)
        with Image.open(p) as im:
            assert im.mode == ("RGBA" if x is rgba else "RGB") and im.info.get("lossless", True)
            assert np.array_equal(np.asarray(im), x), name  # the colour under alpha 0 too (exact)
        first = p.read_bytes()
        write_image(p, x)
        assert p.read_bytes() == first, "deterministic"
    lossy = tmp_path / "q.webp"
    write_image(lossy, img, quality=80)
    assert not np.array_equal(read_image(lossy), img)
    assert np.abs(read_image(lossy).astype(int) - img).mean() < 3  # lossy, not another image
    assert lossy.stat().st_size < (tmp_path / "rgb.webp").stat().st_size / 2
    # JPEG: quality 95 unless given
    write_image(tmp_path / "d.jpg", img)
    write_image(tmp_path / "q95.jpg", img, quality=95)
    write_image(tmp_path / "q50.jpg", img, quality=50)
    assert (tmp_path / "d.jpg").read_bytes() == (tmp_path / "q95.jpg").read_bytes()
    assert (tmp_path / "q50.jpg").stat().st_size < (tmp_path / "d.jpg").stat().st_size


def test_a_lossless_webp_is_written_at_the_measured_effort(tmp_path: Path, monkeypatch) -> None:
    """A lossless .webp was encoded at Pillow's default effort (method 4, quality 80): 2.5-3.3x
    PNG's time for files 0.03 % smaller than at quality 40, which takes 0.55x that time
    (benchmarks/bench_webp.py, BENCHMARKS.md "Lossless WebP"). It is written at
    WEBP_LOSSLESS_METHOD / WEBP_LOSSLESS_EFFORT, still exactly; a lossy one (quality given)
    keeps Pillow's method."""
    from bafusion.io import write as w

    assert (w.WEBP_LOSSLESS_METHOD, w.WEBP_LOSSLESS_EFFORT) == (4, 40)
    saved = []
    real = Image.Image.save

    def spying(self, fp, format=None, **params):
        saved.append((format, params))
        return real(self, fp, format, **params)

    monkeypatch.setattr(Image.Image, "save", spying)
    img = _photo_like()
    write_image(tmp_path / "x.webp", img)
    assert saved[-1][0] == "WEBP" and saved[-1][1]["lossless"] is True
    assert (saved[-1][1]["method"], saved[-1][1]["quality"]) == (4, 40), saved[-1]
    assert np.array_equal(read_image(tmp_path / "x.webp"), img)
    write_image(tmp_path / "q.webp", img, quality=70)
    assert saved[-1][1].get("quality") == 70 and "method" not in saved[-1][1] and not saved[-1][1].get("lossless")


@pytest.mark.parametrize("suffix, quality, words", [
    (".png", 80, "x.png: quality 80: a .png output takes no quality (only .jpg and .webp outputs are written lossily)"),
    (".tif", 80, "x.tif: quality 80: a .tif output takes no quality"),
    (".webp", 0, "x.webp: quality 0: give a whole number from 1 to 100"),
    (".jpg", 101, "x.jpg: quality 101: give a whole number from 1 to 100"),
])
def test_a_quality_of_no_use_is_refused_naming_the_file(tmp_path: Path, suffix, quality, words) -> None:
    with pytest.raises(UserError) as e:
        write_image(tmp_path / f"x{suffix}", _photo_like(8), quality=quality)
    assert str(e.value).startswith(str(tmp_path / words.split(":")[0])) and words.split(": ", 1)[1] in str(e.value)
    assert not list(tmp_path.iterdir())


def test_a_webp_larger_than_the_format_holds_is_refused_before_encoding(tmp_path: Path) -> None:
    from bafusion.io import output_format_problem

    assert output_format_problem("f.webp", shape=(16383, 16383, 3)) is None
    why = output_format_problem("f.webp", shape=(100, 16384, 3))
    assert why == "the image is 16384 x 100 pixels and a WebP holds at most 16383 x 16383: write .png or .tif"
    assert output_format_problem("f.png", shape=(100, 16384, 3)) is None
    with pytest.raises(UserError, match="a WebP holds at most 16383"):
        write_image(tmp_path / "x.webp", np.zeros((2, 16384), np.uint8))
    assert not list(tmp_path.iterdir())


def test_a_webp_where_pillow_has_no_webp_is_refused_clearly(tmp_path: Path, monkeypatch) -> None:
    """Pillow built without libwebp registers no .webp: write_image said "unknown image format
    '.webp'"; now it says that this Pillow lacks WebP and what to do."""
    from PIL import features

    check = features.check
    monkeypatch.setattr(features, "check", lambda name: False if name == "webp" else check(name))
    with pytest.raises(UserError, match=r"x\.webp: this Pillow cannot write WebP \(it was built without libwebp: "
                                        r"PIL\.features\.check\('webp'\) is False\); install a Pillow with WebP"):
        write_image(tmp_path / "x.webp", _photo_like(8))
    assert not list(tmp_path.iterdir())
    write_image(tmp_path / "x.png", _photo_like(8))  # other formats as before


@pytest.mark.parametrize("fmt", ["png", "jpg"])
def test_an_image_with_a_damaged_exif_block_is_read_unturned(tmp_path: Path, fmt: str) -> None:
    """A PNG whose eXIf chunk is garbage was "unreadable image (SyntaxError: not a TIFF file
    ...)" to image_info (fuse, fuse-dir, metrics), though read_image read its pixels, and a
    JPEG with the same block was read: both are now read, as having no orientation."""
    from bafusion.cli import main
    from bafusion.io import image_info, read_image

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (40, 30), dtype=np.uint8)
    p = tmp_path / f"g.{fmt}"
    Image.fromarray(pixels).save(p, exif=b"Exif\x00\x00" + b"\xff" * 40, **({"quality": 100} if fmt == "jpg" else {}))
    info = image_info(p)
    assert (info.width, info.height, info.orientation) == (30, 40, 1)
    assert image_info(p, decode=True).orientation == 1
    got = read_image(p)
    assert got.shape == (40, 30)
    if fmt == "png":
        assert np.array_equal(got, pixels)
    Image.fromarray(pixels).save(tmp_path / "r.png")
    assert main(["metrics", str(p), str(p), str(tmp_path / "r.png")]) == 0


# --------------------------------------------------------------------------------------
# only the formats read are tried: no EPS (Ghostscript) under a photo's name

_EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 96 96\n0 0 moveto 96 96 lineto stroke\nshowpage\n%%EOF\n")


def test_an_eps_file_named_png_is_refused_and_never_reaches_ghostscript(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An EPS file named eps-A.png was opened by Pillow's EPS reader and handed to Ghostscript
    (a PostScript interpreter) by fuse, fuse-dir and every reader: "unreadable image
    (CalledProcessError: Command '['gs', ...]')" where gs failed, a rendered "photo" where it did
    not. Only the formats read are tried (READ_FORMATS); the file is "not an image format
    bafusion reads", naming what it is, and Ghostscript is never called."""
    from PIL import EpsImagePlugin

    from bafusion.cli import main as cli_main
    from bafusion.io import image_info
    from bafusion.io.formats import open_image

    calls: list[object] = []

    def ghostscript(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise OSError("Ghostscript was called")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    eps = tmp_path / "eps-A.png"
    eps.write_bytes(_EPS)
    ok = tmp_path / "eps-B.png"
    Image.fromarray(np.zeros((96, 96), np.uint8)).save(ok)
    wanted = "not an image format bafusion reads: its first bytes are those of EPS (Encapsulated Postscript)"
    for read in (open_image, lambda p: image_info(p, decode=True), read_image, lambda p: read_source_set([p, ok])):
        with pytest.raises(InputFileError, match=r"not an image format bafusion reads") as ei:
            read(eps)
        assert wanted in str(ei.value) and str(eps) in str(ei.value)
    assert cli_main(["fuse", str(eps), str(ok), "-o", str(tmp_path / "out.png"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{eps}: {wanted}" in err, err
    assert calls == []
    assert not (tmp_path / "out.png").exists()


def test_other_formats_pillow_reads_but_bafusion_does_not_are_named(tmp_path: Path) -> None:
    """An icon (ICO) or a Photoshop file is not read as a photo whatever its name: the error says
    what the file is; the formats of IMAGE_SUFFIXES are each among those tried (READ_FORMATS)."""
    from bafusion.io import IMAGE_SUFFIXES
    from bafusion.io.formats import read_formats

    ico = tmp_path / "icon.jpg"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ico, format="ICO")
    with pytest.raises(InputFileError, match=r"not an image format bafusion reads: its first bytes are those of ICO"):
        read_image(ico)
    registered = Image.registered_extensions()
    tried = set(read_formats())
    for suffix in IMAGE_SUFFIXES:
        fmt = registered.get(suffix)
        if fmt is None:  # AVIF in a Pillow without libavif
            continue
        assert (fmt if fmt != "MPO" else "JPEG") in tried, suffix
    assert "EPS" not in tried and "ICO" not in tried


def _alpha_sources(folder: Path, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """opaque.png (RGBA, alpha 255 everywhere), half.png (RGBA, its right half transparent) and
    gray.png (LA, as half.png) in ``folder``; their colours and the half-transparent alpha."""
    rng = np.random.default_rng(seed)
    rgb = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
    alpha = np.full((40, 48), 255, np.uint8)
    Image.fromarray(np.dstack([rgb, alpha])).save(folder / "opaque.png")
    alpha[:, 24:] = 0
    Image.fromarray(np.dstack([rgb, alpha])).save(folder / "half.png")
    Image.fromarray(np.dstack([rgb[..., 0], alpha]), "LA").save(folder / "gray.png")
    return rgb, alpha


def test_a_dropped_alpha_channel_is_noted_once_per_file(tmp_path: Path, capsys, tiny_nets) -> None:
    """A source with transparency (B's right half transparent) lost it without a word, though
    fuse notes the other things it drops (XMP, IPTC, colour chunks): a line names each file
    whose alpha (8-bit RGBA, gray + alpha, 16-bit gray + alpha TIFF) or transparent colour
    (palette tRNS) is dropped, once; an alpha that is opaque everywhere loses nothing: no line."""
    import tifffile

    from bafusion.cli import main

    rgb, alpha = _alpha_sources(tmp_path, 3)
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    pal = Image.fromarray(rgb).convert("P")
    pal.save(tmp_path / "keyed.png", transparency=0)
    tifffile.imwrite(tmp_path / "la16.tif", np.dstack([rgb[..., 0], alpha]).astype(np.uint16) * 257,
                     photometric="minisblack", extrasamples=["unassalpha"])
    notes = read_source_set([tmp_path / n for n in ("plain.png", "opaque.png", "half.png", "gray.png",
                                                     "keyed.png", "la16.tif")]).notes
    dropped = [n for n in notes if "is dropped: its colours" in n]
    assert dropped == [f"{tmp_path / n}: its alpha channel (transparency) is dropped: its colours are used as on "
                       "full opacity" for n in ("half.png", "gray.png")] + [
        f"{tmp_path / 'keyed.png'}: its transparent colour is dropped: its colours are used as on full opacity",
        f"{tmp_path / 'la16.tif'}: its alpha channel (transparency) is dropped: its colours are used as on full "
        "opacity"], notes
    assert not [n for n in read_source_set([tmp_path / "plain.png", tmp_path / "opaque.png"]).notes if "alpha" in n]
    capsys.readouterr()
    assert main(["fuse", str(tmp_path / "plain.png"), str(tmp_path / "half.png"), "-o", str(tmp_path / "f.png"),
                 "--model", str(tiny_nets), "--device", "cpu", "--force", "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.count("alpha channel") == 1 and f"bafusion fuse: {tmp_path / 'half.png'}: its alpha channel" in err, err


def test_the_alpha_note_does_not_decode_a_source_twice(tmp_path: Path, monkeypatch) -> None:
    """Telling an opaque alpha from one that is not took a second full decode of each RGBA or
    gray + alpha source (0.8-2.8 s for a 24 MP RGBA PNG, 0.5-0.7 of the read itself, loaded
    machine): the reader's decode tells it. Each file is decoded once; the notes are as before."""
    from PIL import ImageFile

    rgb, alpha = _alpha_sources(tmp_path, 4)
    decoded: list[str] = []
    load = ImageFile.ImageFile.load

    def counted(self):
        if self.tile:  # not yet decoded
            decoded.append(getattr(self, "filename", "") or getattr(self.fp, "name", "?"))
        return load(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counted)
    paths = [tmp_path / n for n in ("opaque.png", "half.png", "gray.png")]
    notes = read_source_set(paths).notes
    assert [n for n in notes if "is dropped" in n] == [
        f"{tmp_path / n}: its alpha channel (transparency) is dropped: its colours are used as on full opacity"
        for n in ("half.png", "gray.png")], notes
    assert sorted(decoded) == sorted(map(str, paths)), decoded


def test_a_non_square_resolution_is_turned_with_the_image(tmp_path: Path) -> None:
    """A shot stored 20x10 at 300 x 150 dpi with EXIF orientation 6 (or 8, 5, 7) is read
    turned, 10x20: across it the stored 150 dpi, down it 300. Its resolution was carried as
    stored, (300, 150), and the carried EXIF's XResolution/YResolution too, so the output
    printed at half its width and twice its height; orientations that do not turn by 90
    degrees (1, 3) keep (300, 150). The same for a PNG (pHYs) and an 8-bit TIFF."""
    from bafusion.io import read_source_set, source_dpi, write_image

    X, Y = 0x011A, 0x011B
    px = np.random.default_rng(0).integers(0, 255, (10, 20, 3), dtype=np.uint8)
    got: dict[tuple[str, int], object] = {}
    for orientation in (1, 3, 5, 6, 7, 8):
        ex = Image.Exif()
        ex[0x0112] = orientation
        ex[X], ex[Y], ex[0x0128] = 300.0, 150.0, 2
        for suffix in (".jpg", ".png", ".tif"):
            path = tmp_path / f"o{orientation}{suffix}"
            Image.fromarray(px).save(path, exif=ex.tobytes(), dpi=(300, 150))
            got[suffix, orientation] = source_dpi(path)
    want = {(s, o): (150.0, 300.0) if o in (5, 6, 7, 8) else (300.0, 150.0) for s, o in got}
    assert got == want
    s = read_source_set([tmp_path / "o6.jpg"] * 2)
    assert s.images[0].shape == (20, 10, 3) and s.dpi == (150.0, 300.0)
    out = tmp_path / "out.jpg"
    write_image(out, s.images[0], dpi=s.dpi, exif=s.exif)
    with Image.open(out) as im:
        ex = im.getexif()
        assert im.size == (10, 20) and im.info["dpi"] == (150, 300)
        assert (ex[0x0112], float(ex[X]), float(ex[Y])) == (1, 150.0, 300.0)
    s3 = read_source_set([tmp_path / "o3.jpg"] * 2)  # turned by 180 degrees: as stored
    ex3 = Image.Exif()
    ex3.load(s3.exif)
    assert s3.dpi == (300.0, 150.0) and (float(ex3[X]), float(ex3[Y])) == (300.0, 150.0)


def test_the_alpha_note_fires_only_where_some_pixel_is_not_opaque(tmp_path: Path) -> None:
    """The note that transparency is dropped fired for an opaque 16-bit alpha (gray + alpha
    TIFF, alpha 65535 everywhere) and for a palette's transparent index that no pixel uses:
    nothing was lost. The readers now tell, from the samples they decode: no line for those (nor
    for an unused transparent gray value or 16-bit PNG alpha opaque everywhere); a line still
    for a 16-bit alpha one level under opaque (65534, whose high byte is 255), a used
    transparent index or value, and a palette's translucent entry in use."""
    import png
    import tifffile

    rng = np.random.default_rng(5)
    g16 = rng.integers(0, 65536, (20, 24), dtype=np.uint16)
    opaque16 = np.full_like(g16, 65535)
    under = opaque16.copy()
    under[3, 4] = 65534
    for name, alpha in (("la16.tif", opaque16), ("la16u.tif", under)):
        tifffile.imwrite(tmp_path / name, np.dstack([g16, alpha]), photometric="minisblack",
                         extrasamples=["unassalpha"])
    rgb16 = rng.integers(0, 65536, (20, 24, 3), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "rgba16.tif", np.dstack([rgb16, opaque16]), photometric="rgb", extrasamples=[1])
    for name, alpha in (("la16.png", opaque16), ("la16u.png", under)):
        with open(tmp_path / name, "wb") as fh:
            png.Writer(24, 20, greyscale=True, alpha=True, bitdepth=16).write(
                fh, np.dstack([g16, alpha]).reshape(20, -1).tolist())
    idx = rng.integers(1, 6, (20, 24), dtype=np.uint8)  # indices 1..5: 0 and 6.. unused
    pal = Image.fromarray(idx, "P")
    pal.putpalette(list(range(48)))
    pal.save(tmp_path / "unused.png", transparency=0)
    pal.save(tmp_path / "used.png", transparency=3)
    pal.save(tmp_path / "half_unused.png", transparency=bytes([255] * 6 + [128]))  # index 6: translucent, unused
    pal.save(tmp_path / "half_used.png", transparency=bytes([255, 255, 128]))  # index 2: translucent, used
    pal.save(tmp_path / "unused.gif", transparency=0)
    gray = Image.fromarray(rng.integers(10, 250, (20, 24), dtype=np.uint8))
    gray.save(tmp_path / "key_unused.png", transparency=5)
    Image.fromarray(np.where(idx == 1, 5, 100).astype(np.uint8)).save(tmp_path / "key_used.png", transparency=5)
    quiet = ("la16.tif", "rgba16.tif", "la16.png", "unused.png", "half_unused.png", "unused.gif", "key_unused.png")
    for name in quiet:
        notes = read_source_set([tmp_path / name]).notes
        assert not [n for n in notes if "is dropped: its colours" in n], (name, notes)
    alpha_line = "its alpha channel (transparency) is dropped: its colours are used as on full opacity"
    colour_line = "its transparent colour is dropped: its colours are used as on full opacity"
    for name, line in (("la16u.tif", alpha_line), ("la16u.png", alpha_line), ("used.png", colour_line),
                       ("half_used.png", colour_line), ("key_used.png", colour_line)):
        notes = read_source_set([tmp_path / name]).notes
        assert [n for n in notes if "is dropped: its colours" in n] == [f"{tmp_path / name}: {line}"], (name, notes)


def test_a_colour_jpeg_is_written_4_4_4_or_with_the_subsampling_given(tmp_path: Path) -> None:
    """A JPEG was always written 4:2:0 (Pillow's default), halving the colour resolution both
    ways (saturated 1-pixel colour lines: 8.8 dB against 37.2 for 4:4:4 at quality 95,
    benchmarks/bench_subsampling.py). write_image writes 4:4:4 unless given ``subsampling``;
    source_subsampling reads a JPEG's, None for other files; a name it does not take is refused,
    naming the file, before anything is written."""
    from PIL import JpegImagePlugin

    from bafusion.io import JPEG_SUBSAMPLING, source_subsampling

    img = _photo_like(8)

    def sampling(path: Path) -> int:
        with Image.open(path) as im:
            return JpegImagePlugin.get_sampling(im)

    write_image(tmp_path / "d.jpg", img)
    assert JPEG_SUBSAMPLING == "4:4:4" and sampling(tmp_path / "d.jpg") == 0
    for name, number in (("4:4:4", 0), ("4:2:2", 1), ("4:2:0", 2)):
        write_image(tmp_path / "s.jpg", img, subsampling=name)
        assert sampling(tmp_path / "s.jpg") == number and source_subsampling(tmp_path / "s.jpg") == name
    # a 4:2:2 portrait shot turned by its orientation is 4:4:0 as read: 4:2:2 would halve its
    # colour both ways; 4:2:0 is halved both ways whichever way it is turned
    for orientation, name, told in ((6, "4:2:2", None), (8, "4:2:2", None), (3, "4:2:2", "4:2:2"),
                                    (6, "4:2:0", "4:2:0"), (6, "4:4:4", "4:4:4")):
        exif = Image.Exif()
        exif[0x0112] = orientation
        Image.fromarray(img).save(tmp_path / "o.jpg", quality=95, subsampling=name, exif=exif.tobytes())
        assert source_subsampling(tmp_path / "o.jpg") == told, (orientation, name)
    write_image(tmp_path / "g.jpg", img[..., 0], subsampling="4:2:0")  # gray: none, not refused
    assert source_subsampling(tmp_path / "g.jpg") is None
    write_image(tmp_path / "p.png", img, subsampling="4:2:0")  # not used by a PNG
    assert source_subsampling(tmp_path / "p.png") is None
    with pytest.raises(UserError, match=r"x\.jpg: subsampling must be one of '4:4:4', '4:2:2', '4:2:0' or None, got 2"):
        write_image(tmp_path / "x.jpg", img, subsampling=2)  # type: ignore[arg-type]
    assert not (tmp_path / "x.jpg").exists()


def test_a_shot_of_another_resolution_than_the_first_is_said(tmp_path: Path) -> None:
    """Shots of 300 and 72 dpi were fused silently into a 300 dpi output (A's), where a differing
    colour profile, depth or gray/colour gets a line: dpi_notes says it, among the notes of
    read_source_set (what bafusion fuse prints); not among those for an array
    (SourceSet.array_notes: an array states no resolution)."""
    from bafusion.io import dpi_notes

    img = _photo_like(16)
    files = {}
    for name, dpi in (("a300", (300, 300)), ("b72", (72, 72)), ("c300", (300, 300)), ("d", None), ("e", (300, 150))):
        files[name] = tmp_path / f"{name}.png"
        Image.fromarray(img).save(files[name], **({"dpi": dpi} if dpi else {}))
    a, b, c, d, e = files.values()
    line = f"{b} states 72 dpi, {a} 300 dpi: the output states {a}'s"
    assert dpi_notes([a, b, c]) == [line]
    assert dpi_notes([a, d, e]) == [f"{d} states no resolution, {a} 300 dpi: the output states {a}'s",
                                    f"{e} states 300x150 dpi, {a} 300 dpi: the output states {a}'s"]
    assert dpi_notes([d, a]) == [f"{a} states 300 dpi, {d} no resolution: the output states none"]
    assert dpi_notes([a, c]) == [] and dpi_notes([d, d]) == [] and dpi_notes([a]) == []
    src = read_source_set([a, b])
    assert line in src.notes and line in src.notes_for(tmp_path / "f.jpg") and line not in src.array_notes()


def test_adobe_rgb_stated_only_in_exif_is_compared_between_shots(tmp_path: Path) -> None:
    """A camera set to Adobe RGB writes no ICC profile in its JPEGs: its EXIF says ColorSpace
    0xFFFF (uncalibrated) with the interoperability index R03 (some cameras: ColorSpace 2).
    Such a shot beside an sRGB one (ColorSpace 1, R98) was fused in silence, as the same
    colours; now it is said, and what the result carries: the first's EXIF, where the output's
    format holds EXIF (a .bmp does not)."""
    from bafusion.io import profile_notes

    img = _photo_like(16)

    def shot(name: str, space: int, index: str | None) -> Path:
        sub: dict = {0xA001: space}
        if index:
            sub[0xA005] = {0x0001: index}
        ex = Image.Exif()
        ex[0x8769] = sub
        Image.fromarray(img).save(tmp_path / name, exif=ex.tobytes())
        return tmp_path / name

    adobe, srgb, adobe2 = shot("adobe.jpg", 0xFFFF, "R03"), shot("srgb.jpg", 1, "R98"), shot("adobe2.jpg", 2, None)
    uncal = shot("uncal.jpg", 0xFFFF, None)  # uncalibrated, no option file named: not Adobe RGB
    assert profile_notes([adobe, srgb], None, True, tmp_path / "f.jpg") == [
        f"{srgb} has no colour description and {adobe} Adobe RGB stated in its EXIF; the result carries "
        f"{adobe}'s EXIF, which states Adobe RGB (colours are not converted)"]
    assert profile_notes([adobe, srgb], None, True, tmp_path / "f.bmp") == [
        f"{srgb} has no colour description and {adobe} Adobe RGB stated in its EXIF; the result carries no colour "
        f"description (.bmp cannot hold {adobe}'s EXIF, which states Adobe RGB) (colours are not converted)"]
    line = (f"{adobe} has Adobe RGB stated in its EXIF and {srgb} no colour description; the result carries none "
            "(colours are not converted)")
    assert profile_notes([srgb, adobe], None, True, tmp_path / "f.jpg") == [line]
    assert profile_notes([adobe, adobe2], None, True) == [] and profile_notes([srgb, uncal], None, True) == []
    src = read_source_set([srgb, adobe])
    assert line in src.notes_for(tmp_path / "f.jpg")
    assert (f"{adobe} has Adobe RGB stated in its EXIF and {srgb} no colour description; colours are not converted "
            "(the fused array holds each shot's values as stored)") in src.array_notes()


def test_the_alpha_note_of_a_low_bit_gray_png_and_a_malformed_transparent_colour(tmp_path: Path) -> None:
    """Pillow decodes a 2 or 4-bit gray PNG on the 8-bit scale (2 bits: 0, 85, 170, 255) but
    keeps its transparent gray raw (3 for white): compared as such, a transparent value that
    pixels use was taken for unused and the note was silent. An 8-bit RGB PNG whose tRNS holds
    a value over 255 (malformed; no pixel can have it) made the reader fail with an
    OverflowError instead of reading the file."""
    import struct
    import zlib

    import png

    h, w = 6, 8
    for bits in (2, 4):
        top = (1 << bits) - 1
        v = np.tile(np.arange(w) % (top + 1), (h, 1))
        v[0, -1] = top
        for name, key in ((f"g{bits}_used.png", top), (f"g{bits}_unused.png", None)):
            rows = np.where(v == top, top - 1, v) if key is None else v  # unused: no pixel of value top
            with open(tmp_path / name, "wb") as fh:
                png.Writer(w, h, greyscale=True, bitdepth=bits, transparent=top).write(fh, rows.tolist())
    line = "its transparent colour is dropped: its colours are used as on full opacity"
    for bits in (2, 4):
        used, unused = tmp_path / f"g{bits}_used.png", tmp_path / f"g{bits}_unused.png"
        assert [n for n in read_source_set([used]).notes if "is dropped" in n] == [f"{used}: {line}"]
        assert not [n for n in read_source_set([unused]).notes if "is dropped" in n]
    p = tmp_path / "rgb_bad_key.png"
    Image.fromarray(np.full((h, w, 3), 7, np.uint8)).save(p, transparency=(10, 20, 30))
    b = bytearray(p.read_bytes())
    i = b.index(b"tRNS")
    b[i + 4:i + 10] = struct.pack(">HHH", 300, 20, 30)
    b[i + 10:i + 14] = struct.pack(">I", zlib.crc32(bytes(b[i:i + 10])))
    p.write_bytes(bytes(b))
    got = read_source_set([p])
    assert (got.images[0] == 7).all() and not [n for n in got.notes if "is dropped" in n]


def test_an_8_bit_png_is_written_at_zlib_level_3_with_the_same_pixels(tmp_path: Path) -> None:
    """write_image wrote 8-bit PNGs at zlib level 6 (Pillow's default): a 24 MP output took 3.2 CPU
    s to encode (real photos tiled; 8.4 s with camera-like noise, 1.9 s smooth) where level 3
    takes 1.4 s (2.8, 0.95) for 6-23 % more bytes (io.write.PNG_COMPRESS_LEVEL). The zlib stream's
    header says its level class (FLEVEL: 0 for level 1, 1 for 2-5, 2 for 6, 3 for 7-9); the pixels
    read back are the array's."""
    import struct

    from bafusion.io import PNG_COMPRESS_LEVEL, write_image

    rng = np.random.default_rng(3)
    img = np.clip(np.linspace(0, 255, 64 * 48 * 3).reshape(48, 64, 3) + rng.normal(0, 3, (48, 64, 3)), 0, 255)
    img = img.astype(np.uint8)
    out = tmp_path / "f.png"
    write_image(out, img)
    data = out.read_bytes()
    pos, first_idat = 8, None
    while pos < len(data):  # the PNG's chunks: length, type, data, CRC
        n, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            first_idat = data[pos + 8:pos + 8 + n]
            break
        pos += 12 + n
    assert first_idat is not None and PNG_COMPRESS_LEVEL == 3
    assert first_idat[0] & 0x0F == 8 and (first_idat[1] >> 6) == 1, first_idat[:2].hex()  # deflate, levels 2-5
    with Image.open(out) as im:
        assert np.array_equal(np.asarray(im), img)


def test_write_image_refuses_metadata_arguments_of_the_wrong_type_naming_them(tmp_path: Path, rgb) -> None:
    """``write_image(..., dpi=300)`` raised Pillow's TypeError "'int' object is not
    subscriptable" and ``exif="abc"`` a TypeError from deep in Pillow's encoder, naming neither
    the file nor the argument. Each is refused before anything is written, naming both: an
    InputTypeError (a UserError and a TypeError) for a wrong type, a UserError for a resolution
    of no meaning; the right types are written as before."""
    from bafusion.errors import InputTypeError

    bad_types = [({"dpi": 300}, r"dpi must be \(x, y\) dots per inch, a pair of numbers, or None, got 300"),
                 ({"dpi": (300,)}, r"dpi must be .* got \(300,\)"),
                 ({"dpi": ("300", "300")}, r"dpi must be .* a pair of numbers"),
                 ({"dpi": "300"}, r"dpi must be .* got '300'"),
                 ({"exif": "abc"}, r"exif must be bytes or None, got str"),
                 ({"exif": Image.Exif()}, r"exif must be bytes or None, got Exif \(Image\.Exif: pass its \.tobytes\(\)\)"),
                 ({"icc": "sRGB"}, r"icc must be bytes or None, got str"),
                 ({"png_colour": 1}, r"png_colour must be bytes or None, got int"),
                 ({"bits": "12"}, r"bits must be a whole number .* got '12'"),
                 ({"bits": 12.0}, r"bits must be a whole number .* got 12\.0")]
    for suffix in (".png", ".jpg", ".tif", ".bmp"):
        out = tmp_path / f"o{suffix}"
        for kwargs, message in bad_types:
            with pytest.raises(TypeError, match=re.escape(str(out)) + ": " + message) as e:
                write_image(out, rgb, **kwargs)
            assert isinstance(e.value, InputTypeError), kwargs
        for dpi in ((0, 300), (300, -1), (float("nan"), 300), (float("inf"), 300)):
            with pytest.raises(UserError, match=re.escape(f"{out}: dpi must be (x, y) dots per inch, two finite "
                                                          f"numbers above 0, got {dpi!r}")):
                write_image(out, rgb, dpi=dpi)
        assert not out.exists() and list(tmp_path.iterdir()) == [], suffix
    # the right types, numpy's numbers among them, are written
    for dpi in ((300, 150), [72.0, 72.0], (np.float64(300.0), np.int64(300))):
        write_image(tmp_path / "ok.png", rgb, dpi=dpi, exif=bytearray(Image.Exif().tobytes()))
        assert read_image(tmp_path / "ok.png").shape == rgb.shape
    write_image(tmp_path / "ok16.png", rgb.astype(np.uint16) * 16, bits=np.int64(12))


def test_write_image_takes_the_dpi_pillow_reads_from_a_tiff(tmp_path: Path, rgb) -> None:
    """Pillow gives a TIFF's resolution as IFDRational values (``Image.open(tif).info["dpi"]``),
    which are numbers (``numbers.Rational``) but neither int nor float: write_image's argument
    check refused them as "not a pair of numbers" (printed ``(300.0, 150.0)``), and a Fraction too,
    though every writer takes them. They are written as any other dpi."""
    from fractions import Fraction

    from PIL.TiffImagePlugin import IFDRational

    from bafusion.io.metadata import source_dpi

    Image.fromarray(rgb).save(tmp_path / "s.tif", dpi=(300, 150))
    with Image.open(tmp_path / "s.tif") as im:
        pillows = im.info["dpi"]
    assert isinstance(pillows[0], IFDRational), type(pillows[0])
    for img, suffixes in ((rgb, (".png", ".jpg", ".tif", ".bmp")), (rgb.astype(np.uint16) * 257, (".png", ".tif"))):
        for suffix in suffixes:
            for dpi in (pillows, (Fraction(300), Fraction(150))):
                out = tmp_path / f"o{img.dtype}{suffix}"
                write_image(out, img, dpi=dpi)
                assert source_dpi(out) == (300.0, 150.0), (suffix, dpi)
    with pytest.raises(UserError, match="two finite numbers above 0"):
        write_image(tmp_path / "z.png", rgb, dpi=(Fraction(0), Fraction(300)))


@pytest.mark.parametrize("colour", [255, 0])
def test_a_matte_held_in_the_alpha_channel_is_read_from_it(tmp_path: Path, rgb, colour: int) -> None:
    # a transparent PNG of one colour whose alpha is the matte (what matting tools export) was read
    # as its uniform colour: all foreground (white) or all background (black), trained on with a warning
    g = rgb[..., 0]
    flat = np.full(g.shape, colour, np.uint8)
    Image.fromarray(np.dstack([flat, flat, flat, g]), "RGBA").save(tmp_path / "m.png")
    assert np.array_equal(read_matte(tmp_path / "m.png"), g)
    Image.fromarray(np.dstack([flat, g]), "LA").save(tmp_path / "la.png")
    assert np.array_equal(read_matte(tmp_path / "la.png"), g)


def test_a_matte_with_gray_values_and_another_alpha_is_refused(tmp_path: Path, rgb) -> None:
    g, other = rgb[..., 0], rgb[..., 1]
    Image.fromarray(np.dstack([g, g, g, np.full(g.shape, 255, np.uint8)]), "RGBA").save(tmp_path / "opaque.png")
    assert np.array_equal(read_matte(tmp_path / "opaque.png"), g)  # opaque alpha: the gray is the matte
    Image.fromarray(np.dstack([g, g, g, g]), "RGBA").save(tmp_path / "same.png")
    assert np.array_equal(read_matte(tmp_path / "same.png"), g)  # both the same: no doubt
    Image.fromarray(np.dstack([g, g, g, other]), "RGBA").save(tmp_path / "two.png")
    with pytest.raises(InputFileError, match=r"two\.png: matte holds gray values and a transparency \(alpha\) "
                                             r"channel that differ"):
        read_matte(tmp_path / "two.png")
    Image.fromarray(np.dstack([rgb, other]), "RGBA").save(tmp_path / "cutout.png")
    with pytest.raises(InputFileError, match=r"cutout\.png: matte is not gray .*transparency \(alpha\) channel"):
        read_matte(tmp_path / "cutout.png")


def _u16_to_u8(v: np.ndarray, full: float = 65535.0) -> np.ndarray:
    return np.clip(np.round(v.astype(np.float64) / full * 255.0), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_16_bit_matte_is_read_on_its_full_scale(tmp_path: Path, suffix: str) -> None:
    # read by the camera-depth rule (the smallest of 8/10/12/14/16 bits holding its largest
    # value), a 16-bit matte of at most 3000 (4.6 % opacity) was read with 3000 as 12-bit 4095:
    # largest 187, 59 % of it "foreground" (>= 128) where none of it is
    import tifffile

    g = np.random.default_rng(3).integers(0, 256, (20, 30), dtype=np.uint8)
    soft = (g.astype(np.float64) / 255 * 3000).astype(np.uint16)
    full = np.random.default_rng(4).integers(0, 65536, (20, 30), dtype=np.uint16)
    for name, v in (("soft", soft), ("full", full), ("g257", g.astype(np.uint16) * 257), ("zero", 0 * soft)):
        for layout, arr in (("gray", v), ("rgb", np.dstack([v, v, v]))):
            f = tmp_path / f"{name}-{layout}{suffix}"
            if suffix == ".tif":
                tifffile.imwrite(f, arr)
            else:
                write_image(f, arr)
            m = read_matte(f)
            assert m.dtype == np.uint8 and m.shape == (20, 30)
            assert np.array_equal(m, _u16_to_u8(v)), (name, layout)
    assert int(read_matte(tmp_path / f"soft-gray{suffix}").max()) == 12
    assert np.array_equal(read_matte(tmp_path / f"g257-gray{suffix}"), g)
    Image.fromarray(g).save(tmp_path / "g8.png")  # 8 bits: read_image's reading, unchanged
    assert np.array_equal(read_matte(tmp_path / "g8.png"), g)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_a_deep_matte_marking_its_bits_is_read_from_them(tmp_path: Path, suffix: str) -> None:
    v12 = np.random.default_rng(5).integers(0, 4096, (20, 30)).astype(np.uint16)
    # on the 16-bit scale, marked 12: PNG sBIT 12 (samples scaled up), OME-TIFF SignificantBits 12 (0..4095 stored)
    write_image(tmp_path / f"m{suffix}", np.round(v12 / 4095 * 65535).astype(np.uint16), bits=12)
    assert np.array_equal(read_matte(tmp_path / f"m{suffix}"), _u16_to_u8(v12, 4095.0))


@pytest.mark.parametrize("top", [1, 255])
def test_a_deep_matte_of_8_bit_values_is_refused(tmp_path: Path, top: int) -> None:
    # 0..255 (or a 0/1 mask) saved as uint16: on the 16-bit scale it is background everywhere
    v = (np.arange(600).reshape(20, 30) % (top + 1)).astype(np.uint16)
    write_image(tmp_path / "m.png", v)
    with pytest.raises(InputFileError, match=rf"m\.png: matte values are 0\.\.{top} in a 16-bit file, whose scale "
                                             r"is 0\.\.65535 .*save a 0\.\.255 matte as an 8-bit image"):
        read_matte(tmp_path / "m.png")
    png = pytest.importorskip("png")
    with open(tmp_path / "la.png", "wb") as fh:  # the same values as a white image's 16-bit alpha
        png.Writer(30, 20, greyscale=True, alpha=True, bitdepth=16).write(
            fh, np.dstack([np.full_like(v, 65535), v]).reshape(20, 60).tolist())
    with pytest.raises(InputFileError, match=rf"la\.png: matte alpha values are 0\.\.{top} in a 16-bit file"):
        read_matte(tmp_path / "la.png")


def test_a_16_bit_alpha_matte_is_read_at_full_depth(tmp_path: Path) -> None:
    # Pillow decodes a 16-bit PNG's alpha to its high byte (truncated: 1 off the gray's rounding,
    # so a gray + alpha PNG whose gray equals its alpha was refused as "gray and alpha differ"),
    # and does not open a 16-bit gray + alpha TIFF: its alpha was dropped, its white read as the matte
    import png
    import tifffile

    from bafusion.io import _png_chunk

    a = np.random.default_rng(6).integers(0, 65536, (20, 30), dtype=np.uint16)
    white = np.full_like(a, 65535)
    want = _u16_to_u8(a)
    assert not np.array_equal(want, (a >> 8).astype(np.uint8))  # truncation differs here

    def write_png(name: str, planes: list[np.ndarray]) -> Path:
        with open(tmp_path / name, "wb") as fh:
            png.Writer(30, 20, greyscale=len(planes) == 2, alpha=True, bitdepth=16).write(
                fh, np.dstack(planes).reshape(20, 30 * len(planes)).tolist())
        return tmp_path / name

    for f in (write_png("la.png", [white, a]), write_png("same.png", [a, a]), write_png("black.png", [0 * a, a]),
              write_png("rgba.png", [white, white, white, a])):
        assert np.array_equal(read_matte(f), want), f.name
    tifffile.imwrite(tmp_path / "la.tif", np.dstack([white, a]), photometric="minisblack",
                     extrasamples=["unassalpha"])
    tifffile.imwrite(tmp_path / "rgba.tif", np.dstack([white, white, white, a]), photometric="rgb",
                     extrasamples=["unassalpha"])
    for f in (tmp_path / "la.tif", tmp_path / "rgba.tif"):
        assert np.array_equal(read_matte(f), want), f.name
    soft = write_png("soft.png", [white, (a // 22).astype(np.uint16)])  # at most 2978
    assert np.array_equal(read_matte(soft), _u16_to_u8(a // 22))
    ex = Image.Exif()  # EXIF orientation 6 (an eXIf chunk before IEND): the alpha turned as the gray is
    ex[0x0112] = 6
    data = (tmp_path / "same.png").read_bytes()
    (tmp_path / "turned.png").write_bytes(data[:-12] + _png_chunk(b"eXIf", ex.tobytes()[6:]) + data[-12:])
    assert np.array_equal(read_matte(tmp_path / "turned.png"), np.rot90(want, -1))


def test_a_gray_matte_with_a_transparent_colour_is_read_as_its_gray(tmp_path: Path, rgb) -> None:
    # a gray matte saved with one colour made transparent (tRNS: black keyed out) was refused as
    # 'gray values and a transparency (alpha) channel that differ': its transparency only marks
    # gray values, it adds nothing to them; it was read as its gray before mattes read alpha
    g = rgb[..., 0].copy()
    g[:4] = 0  # some pixels of the keyed colour
    Image.fromarray(g, "L").save(tmp_path / "l.png", transparency=0)
    Image.fromarray(np.dstack([g, g, g]), "RGB").save(tmp_path / "rgb.png", transparency=(0, 0, 0))
    Image.fromarray(g, "L").convert("P").save(tmp_path / "p.png", transparency=0)
    Image.fromarray(g.astype(np.uint16) * 257).save(tmp_path / "i16.png", transparency=0)
    for name in ("l.png", "rgb.png", "p.png", "i16.png"):
        with Image.open(tmp_path / name) as im:
            assert "transparency" in im.info, name  # the file keeps its transparent colour
        assert np.array_equal(read_matte(tmp_path / name), g), name
    # a 16-bit key marks one 16-bit value: 1 keyed, 0 not, both 0 at 8 bits (still the gray)
    deep = g.astype(np.uint16) * 257
    deep[:2] = 1
    Image.fromarray(deep).save(tmp_path / "i16_low.png", transparency=1)
    assert np.array_equal(read_matte(tmp_path / "i16_low.png"), g)
    # a palette of one colour whose entries' alphas are the matte (a quantized white RGBA matte)
    # is read from its alpha: it does not mark gray values
    a = np.zeros(g.shape, np.uint8)
    a[:, g.shape[1] // 2:] = 255
    pal = Image.fromarray(np.where(a > 0, 1, 0).astype(np.uint8), "P")
    pal.putpalette([255, 255, 255] * 2)
    pal.save(tmp_path / "pal.png", transparency=bytes([0, 255]))
    assert np.array_equal(read_matte(tmp_path / "pal.png"), a)


def test_a_matte_without_transparency_is_decoded_once(tmp_path: Path, rgb, monkeypatch: pytest.MonkeyPatch) -> None:
    # looking for a matte in the alpha channel decoded every matte a second time (the 27
    # alphamatting mattes, RGB without alpha: 24.9-28.8 -> 15.1-15.8 ms a matte); the header tells there is none
    import bafusion.io.read as read_mod

    calls: list[str] = []
    real = read_mod.open_image

    def counted(path):
        calls.append(str(path))
        return real(path)

    monkeypatch.setattr(read_mod, "open_image", counted)
    g = rgb[..., 0]
    Image.fromarray(np.dstack([g, g, g]), "RGB").save(tmp_path / "rgb.png")
    Image.fromarray(g, "L").save(tmp_path / "l.png")
    for name in ("rgb.png", "l.png"):
        calls.clear()
        assert np.array_equal(read_matte(tmp_path / name), g)
        assert len(calls) == 1, (name, calls)
    flat = np.full(g.shape, 255, np.uint8)
    Image.fromarray(np.dstack([flat, g]), "LA").save(tmp_path / "la.png")
    assert np.array_equal(read_matte(tmp_path / "la.png"), g)  # its alpha still read
