"""Native baselines (guided-filter fusion, Laplacian pyramid), other methods' results, CLI."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bafusion import cli
from bafusion.errors import InputFileError, UserError
from bafusion.evaluation import baselines as B
from bafusion.evaluation import metrics as M
from bafusion.io import read_image, to_uint8

LYTRO_PAIRS = [f"lytro-{i:02d}" for i in range(1, 21)]
GFF_REL_TOL = 0.02  # our GFF within 2% of the survey's GFF on each metric


def _multifocus(shape: tuple[int, ...] = (64, 80), seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sharp textured X (gray or RGB), A with its right half blurred, B with its left half blurred."""
    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.random(shape[:2]) * 255.0, 0.8)
    x = np.round((x - x.min()) / (x.max() - x.min()) * 200.0 + 20.0)
    if len(shape) == 3:
        x = np.stack([x, 255.0 - x, np.roll(x, 5, axis=0)], axis=2)
    sigma = (3.0, 3.0, 0.0)[: x.ndim]
    blurred = np.round(ndimage.gaussian_filter(x, sigma))
    half = shape[1] // 2
    a, b = x.copy(), x.copy()
    a[:, half:] = blurred[:, half:]
    b[:, :half] = blurred[:, :half]
    return x, a, b


def _mse(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean((np.asarray(x, float) - np.asarray(y, float)) ** 2))


# --------------------------------------------------------------------------------------------
# building blocks


@pytest.mark.parametrize("r", [0, 1, 4, 30])
def test_box_filter_matches_brute_force(r: int) -> None:
    x = np.random.default_rng(r).random((17, 23))
    want = np.empty_like(x)
    for i in range(x.shape[0]):
        for j in range(x.shape[1]):
            want[i, j] = x[max(i - r, 0) : i + r + 1, max(j - r, 0) : j + r + 1].sum()
    assert np.allclose(B.box_filter(x, r), want, atol=1e-10)


def test_guided_filter_edge_preserving_and_smoothing() -> None:
    guide = np.zeros((40, 40))
    guide[:, 20:] = 1.0
    noisy = guide + np.random.default_rng(0).normal(0, 0.05, guide.shape)
    # tiny eps: output follows the guide's step; huge eps: a -> 0, b -> local mean of the
    # input, so the output is the input box-blurred twice
    sharp = B.guided_filter(guide, noisy, 3, 1e-6)
    assert np.abs(sharp - guide).max() < 0.1
    assert np.abs(sharp[:, 19] - sharp[:, 20]).min() > 0.8
    smooth = B.guided_filter(guide, guide, 3, 1e6)
    n = B.box_filter(np.ones_like(guide), 3)
    twice = B.box_filter(B.box_filter(guide, 3) / n, 3) / n
    assert np.allclose(smooth, twice, atol=1e-4)
    assert not np.allclose(smooth, guide, atol=0.1)


# --------------------------------------------------------------------------------------------
# fusion properties (synthetic)


@pytest.mark.parametrize("method", sorted(B.METHODS))
@pytest.mark.parametrize("shape", [(64, 80), (61, 75), (48, 64, 3)])
def test_fusion_recovers_focus_better_than_sources(method: str, shape: tuple[int, ...]) -> None:
    x, a, b = _multifocus(shape)
    f = B.fuse(method, a, b)
    assert f.shape == a.shape and f.dtype == np.float64
    assert f.min() >= 0.0 and f.max() <= 255.0
    err = _mse(f, x)
    assert err < 0.5 * min(_mse(a, x), _mse(b, x)), (err, _mse(a, x), _mse(b, x))


@pytest.mark.parametrize("method", sorted(B.METHODS))
def test_fusing_an_image_with_itself_returns_it(method: str) -> None:
    x, _, _ = _multifocus((40, 52, 3))
    assert np.allclose(B.fuse(method, x, x), x, atol=1e-9)


def test_gff_saliency_replicates_the_border_not_wraps_it() -> None:
    """GFF's Laplacian saliency pads with the border pixel (``mode="nearest"``): a smooth
    horizontal gradient (A, dark at the left, bright at the right) has no detail at its left
    and right borders, so the textured B wins there as everywhere and the fusion is B. Wrapped
    around, the border would see the far side's brightness and A would win a band along both
    sides (up to 24 gray levels off B)."""
    h, w = 48, 64
    a = np.tile(np.linspace(30.0, 220.0, w), (h, 1))
    b = 128.0 + np.random.default_rng(0).normal(0.0, 8.0, (h, w))
    np.testing.assert_allclose(B.gff_fuse(a, b), b, atol=0.01)


@pytest.mark.parametrize("method", sorted(B.METHODS))
def test_uint8_and_float_inputs_agree(method: str) -> None:
    _, a, b = _multifocus((32, 40))
    got_u8 = B.fuse(method, a.astype(np.uint8), b.astype(np.uint8))
    got_f = B.fuse(method, a, b)
    assert np.array_equal(got_u8, got_f)


def test_fusion_rejects_bad_shapes() -> None:
    a = np.zeros((20, 20))
    with pytest.raises(UserError, match="differ in shape"):
        B.gff_fuse(a, np.zeros((20, 21)))
    with pytest.raises(UserError, match="gray .* or RGB"):
        B.laplacian_fuse(np.zeros((4, 4, 2)), np.zeros((4, 4, 2)))
    with pytest.raises(UserError, match="unknown baseline method 'wavelet'"):
        B.fuse("wavelet", a, a)


# --------------------------------------------------------------------------------------------
# GFF against the survey's GFF on the real Lytro pairs


@pytest.fixture(scope="module")
def survey_gff_rows(shared_data: Path) -> dict[str, dict[str, str]]:
    with open(shared_data / "reference" / "metrics-lytro.csv", newline="") as fh:
        return {r["pair"]: r for r in csv.DictReader(fh) if r["method"] == "GFF"}


@pytest.fixture(scope="module")
def gff_metrics(shared_data: Path) -> dict[str, dict[str, float]]:
    """Our GFF on every Lytro pair, with its four metrics (computed once per test module)."""
    out = {}
    for pair in LYTRO_PAIRS:
        a = read_image(shared_data / "eval/lytro" / f"{pair}-A.jpg")
        b = read_image(shared_data / "eval/lytro" / f"{pair}-B.jpg")
        fused = to_uint8(B.gff_fuse(a, b))
        ref = B.read_method_results(shared_data / "reference/lytro", "GFF", pair).astype(float)
        vals = M.compute_all(a, b, fused, M.REQUIRED_METRICS)
        vals["PSNR_vs_survey"] = 10 * np.log10(255.0**2 / _mse(fused, ref))
        out[pair] = vals
    return out


@pytest.mark.parametrize("pair", LYTRO_PAIRS)
def test_gff_matches_survey_gff_per_pair(
    pair: str, gff_metrics: dict[str, dict[str, float]], survey_gff_rows: dict[str, dict[str, str]]
) -> None:
    ours = gff_metrics[pair]
    # image-level agreement with the survey's GFF (measured 58.6-69.2 dB)
    assert ours["PSNR_vs_survey"] > 45.0
    for name in M.REQUIRED_METRICS:
        want = float(survey_gff_rows[pair][name])
        assert abs(ours[name] - want) <= GFF_REL_TOL * want, (name, ours[name], want)


def test_gff_matches_survey_gff_on_average(
    gff_metrics: dict[str, dict[str, float]], survey_gff_rows: dict[str, dict[str, str]]
) -> None:
    for name in M.REQUIRED_METRICS:
        ours = np.mean([gff_metrics[p][name] for p in LYTRO_PAIRS])
        want = np.mean([float(survey_gff_rows[p][name]) for p in LYTRO_PAIRS])
        # measured within 0.06%; 0.5% still flags any real change of the method
        assert abs(ours - want) <= 0.005 * want, (name, ours, want)


# --------------------------------------------------------------------------------------------
# other methods' results


def test_read_method_results_real(shared_data: Path) -> None:
    img = B.read_method_results(shared_data / "reference/lytro", "CNN", "lytro-07")
    assert img.shape == (520, 520, 3) and img.dtype == np.uint8
    gray = B.read_method_results(shared_data / "reference/classic", "SR", "g01-clock")
    assert gray.shape == (512, 512)


def test_read_method_results_other_extension_and_errors(tmp_path: Path) -> None:
    from PIL import Image

    (tmp_path / "MYM").mkdir()
    Image.fromarray(np.full((8, 9), 7, np.uint8)).save(tmp_path / "MYM" / "p1.jpg")
    assert B.read_method_results(tmp_path, "MYM", "p1").shape == (8, 9)
    with pytest.raises(InputFileError, match=r"pair 'p2' by method 'MYM'"):
        B.read_method_results(tmp_path, "MYM", "p2")
    with pytest.raises(InputFileError, match=r"method 'NOPE'.*'p1'"):
        B.read_method_results(tmp_path, "NOPE", "p1")


def test_a_result_stored_twice_is_refused_naming_both_files(tmp_path: Path) -> None:
    """``p1.png`` and ``p1.jpg`` of one method (evaluate's own fused/<method>/ with jpeg_quality)
    were read silently as the PNG, while the JPEG was the image that run measured."""
    from PIL import Image

    (tmp_path / "OLD").mkdir()
    img = np.arange(72, dtype=np.uint8).reshape(8, 9)
    Image.fromarray(img).save(tmp_path / "OLD" / "p1.png")
    Image.fromarray(img).save(tmp_path / "OLD" / "p1.jpg")
    with pytest.raises(InputFileError, match=r"pair 'p1' by method 'OLD' is stored 2 times, p1\.png, p1\.jpg: keep one"):
        B.read_method_results(tmp_path, "OLD", "p1")
    with pytest.raises(InputFileError, match=r"p1\.png, p1\.jpg"):
        B.find_method_result(tmp_path, "OLD", "p1")
    (tmp_path / "OLD" / "p1.jpg").unlink()
    assert B.find_method_result(tmp_path, "OLD", "p1") == tmp_path / "OLD" / "p1.png"


@pytest.mark.parametrize("name", ["p1.webp", "p1.Png", "p1.jfif", "p1.gif"])
def test_a_result_in_any_format_of_the_pairs_is_read(tmp_path: Path, name: str) -> None:
    """A method's results as WebP (GIF, .jfif, a suffix in mixed case), formats a dataset's pairs
    are read in, were "missing" beside the file: only png, jpg, jpeg, tif, tiff and bmp in lower
    or upper case were looked for."""
    from PIL import Image

    (tmp_path / "Mine").mkdir()
    img = np.arange(72, dtype=np.uint8).reshape(8, 9)
    fmt = {".webp": "WEBP", ".png": "PNG", ".jfif": "JPEG", ".gif": "GIF"}[Path(name).suffix.lower()]
    Image.fromarray(img).save(tmp_path / "Mine" / name, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}))
    assert B.find_method_result(tmp_path, "Mine", "p1") == tmp_path / "Mine" / name
    got = B.read_method_results(tmp_path, "Mine", "p1")
    gray = got if got.ndim == 2 else got[..., 0]  # WebP and GIF keep a gray image as RGB (palette)
    assert gray.shape == (8, 9) and (got.ndim == 2 or (got == gray[..., None]).all())
    assert fmt == "JPEG" or np.array_equal(gray, img)
    assert B.find_method_result(tmp_path, "Mine", "p2") is None
    with pytest.raises(InputFileError, match=r"no fused image of pair 'p2' by method 'Mine'"):
        B.read_method_results(tmp_path, "Mine", "p2")


def test_read_method_results_beside_the_sources_follows_the_metrics_rule(tmp_path: Path) -> None:
    """A peer's dark 16-bit result without marked significant bits (largest value below 16384)
    was read alone by its largest value, as 14-bit data, 4 times too bright, beside 8-bit
    sources, where ``bafusion metrics`` refuses such an F. Given the pair's sources it is read
    as the metrics read F: refused beside 8-bit sources, naming it; scaled alike with unmarked
    16-bit sources; a result that marks its bits (sBIT 16: the 16-bit scale) is read so."""
    from PIL import Image

    from bafusion.io import common_bits, scale_to_u8, write_image

    x, a, b = (np.round(v * 0.24).astype(np.uint8) for v in _multifocus())  # dark: 61 at most
    a8, b8 = tmp_path / "a8.png", tmp_path / "b8.png"
    Image.fromarray(a).save(a8)
    Image.fromarray(b).save(b8)
    deep = {n: v.astype(np.uint16) * np.uint16(257) for n, v in (("a16", a), ("b16", b), ("f16", x))}
    for n, v in deep.items():
        Image.fromarray(v).save(tmp_path / f"{n}.png")
    (tmp_path / "PEER").mkdir()
    peer = tmp_path / "PEER" / "p1.png"
    Image.fromarray(deep["f16"]).save(peer)
    with pytest.raises(UserError, match=r"F \(.*PEER/p1.png\) is 16-bit without marked significant bits but "
                                        r"A \(.*a8.png\) and B \(.*b8.png\) are 8-bit"):
        B.read_method_results(tmp_path, "PEER", "p1", (a8, b8))
    a16, b16 = tmp_path / "a16.png", tmp_path / "b16.png"
    alike = scale_to_u8(deep["f16"], common_bits(max(int(v.max()) for v in deep.values())))
    assert np.array_equal(B.read_method_results(tmp_path, "PEER", "p1", (a16, b16)), alike)
    write_image(peer, deep["f16"], bits=16)  # marked: sBIT 16
    for sources in ((a8, b8), (a16, b16)):
        assert np.array_equal(B.read_method_results(tmp_path, "PEER", "p1", sources), x)


# --------------------------------------------------------------------------------------------
# CLI


def _save(path: Path, img: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(np.asarray(img, dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("method", sorted(B.METHODS))
def test_cli_baseline_writes_fused_image(tmp_path: Path, method: str, capsys: pytest.CaptureFixture[str]) -> None:
    x, a, b = _multifocus((48, 64, 3))
    pa, pb = _save(tmp_path / "a.png", a), _save(tmp_path / "b.png", b)
    out = tmp_path / "sub" / "fused.png"
    assert cli.main(["baseline", "--method", method, str(pa), str(pb), "-o", str(out)]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["fused.png"]  # no .part left
    said = capsys.readouterr().out.strip().splitlines()  # was silent on success
    assert len(said) == 1 and said[0].startswith(f"fused 2 images into {out} with {method} (")
    got = read_image(out)
    assert np.array_equal(got, to_uint8(B.fuse(method, a, b)))
    assert _mse(got, x) < 0.5 * min(_mse(a, x), _mse(b, x))


def test_cli_baseline_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, a, b = _multifocus((32, 40))
    pa = _save(tmp_path / "a.png", a)
    pb = _save(tmp_path / "b.png", b[:, :36])
    out = tmp_path / "f.png"
    assert cli.main(["baseline", str(pa), str(tmp_path / "gone.png"), "-o", str(out)]) == 2
    assert "gone.png: file not found" in capsys.readouterr().err
    assert cli.main(["baseline", str(pa), str(pb), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "40x32" in err and "36x32" in err
    assert not out.exists()
    with pytest.raises(SystemExit):
        cli.main(["baseline", "--method", "nope", str(pa), str(pa), "-o", str(out)])


def test_cli_baseline_keeps_the_first_sources_metadata(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``bafusion baseline`` wrote its result without A's ICC profile, EXIF and resolution: a
    Display P3 or Adobe RGB pair's baseline showed other colours than its ``fuse`` result, and
    the camera, date and dpi were lost, silently. Now as ``fuse`` writes them, with its line on
    a B of another profile."""
    from PIL import Image, ImageCms

    _, a, b = _multifocus((48, 64, 3))
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    ex = Image.Exif()
    ex[0x0110], ex[0x0112] = "EOS R5", 1
    pa, pb = tmp_path / "a.jpg", tmp_path / "b.jpg"
    Image.fromarray(np.asarray(a, np.uint8)).save(pa, quality=95, icc_profile=icc, exif=ex, dpi=(300, 300))
    Image.fromarray(np.asarray(b, np.uint8)).save(pb, quality=95)
    out = tmp_path / "f.jpg"
    assert cli.main(["baseline", str(pa), str(pb), "-o", str(out)]) == 0
    with Image.open(out) as im:
        assert im.info.get("icc_profile") == icc
        assert im.getexif().get(0x0110) == "EOS R5" and im.info.get("dpi") == (300, 300)
    err = capsys.readouterr().err
    assert f"bafusion baseline: {pb} has no colour profile and {pa} one" in err
    assert f"bafusion baseline: {pb} states no resolution, {pa} 300 dpi: the output states {pa}'s" in err


def test_cli_baseline_says_what_its_output_format_cannot_hold(tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``baseline`` now writes A's metadata as ``fuse`` does, but to a .bmp it dropped A's ICC
    profile and EXIF silently, where ``fuse`` says so on stderr: now the same line."""
    from PIL import Image, ImageCms

    _, a, b = _multifocus((48, 64, 3))
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    ex = Image.Exif()
    ex[0x0110] = "EOS R5"
    pa, pb = tmp_path / "a.jpg", tmp_path / "b.jpg"
    Image.fromarray(np.asarray(a, np.uint8)).save(pa, quality=95, icc_profile=icc, exif=ex)
    Image.fromarray(np.asarray(b, np.uint8)).save(pb, quality=95, icc_profile=icc)
    out = tmp_path / "f.bmp"
    assert cli.main(["baseline", str(pa), str(pb), "-o", str(out)]) == 0 and out.is_file()
    err = capsys.readouterr().err
    assert (f"bafusion baseline: {out}: the first source's ICC profile and EXIF are not written (.bmp cannot "
            "hold them") in err, err
    assert cli.main(["baseline", str(pa), str(pb), "-o", str(tmp_path / "f.png")]) == 0
    assert "not written" not in capsys.readouterr().err


def test_a_method_folder_is_listed_once_for_many_lookups(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every find_method_result listed the method's whole folder, so N pairs took N listings of
    N names (2000 pairs: 7 s). The folder is listed once while it stays as it was; a name added
    or removed is seen (its mtime changes), and a folder changed within the file system's clock
    tick is listed again rather than read stale."""
    folder = tmp_path / "M"
    folder.mkdir()
    for i in range(40):
        (folder / f"p{i}.png").write_bytes(b"")
    old = time.time_ns() - 60 * 10**9
    os.utime(folder, ns=(old, old))  # a folder not changed in the last seconds
    listings: list[str] = []
    real_listdir, real_scandir = os.listdir, os.scandir

    def listdir(path: object = ".") -> list[str]:
        listings.append(os.fspath(path))  # type: ignore[arg-type]
        return real_listdir(path)  # type: ignore[arg-type]

    def scandir(path: object = ".") -> object:
        listings.append(os.fspath(path))  # type: ignore[arg-type]
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "listdir", listdir)
    monkeypatch.setattr(os, "scandir", scandir)
    getattr(B, "_LISTINGS", {}).clear()  # listings of an earlier test's folders
    for i in range(40):
        assert B.find_method_result(tmp_path, "M", f"p{i}") == folder / f"p{i}.png"
    assert B.find_method_result(tmp_path, "M", "p40") is None
    assert len(listings) == 1
    # a result added (and its twin) is seen: the folder's mtime changed
    (folder / "p40.PNG").write_bytes(b"")
    (folder / "p3.jpg").write_bytes(b"")
    os.utime(folder, ns=(old + 1, old + 1))
    assert B.find_method_result(tmp_path, "M", "p40") == folder / "p40.PNG"
    with pytest.raises(InputFileError, match=r"p3\.png, p3\.jpg"):
        B.find_method_result(tmp_path, "M", "p3")
    assert len(listings) == 2
    # a folder changed just now is not kept: a change within its mtime's tick would go unseen
    (folder / "p3.jpg").unlink()
    for _ in range(3):
        assert B.find_method_result(tmp_path, "M", "p3") == folder / "p3.png"
    assert len(listings) == 5
