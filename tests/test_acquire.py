"""bafusion.data.acquire end to end against a local HTTP server on 127.0.0.1: alphamatting
archives, COCO annotations + images, evaluation pairs; and the local overrides."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_coco import blur, coco_dataset
from test_download import LocalServer, make_zip, sha256

import bafusion.cli.download as cli_download
from bafusion.data import acquire
from bafusion.data.acquire import (
    NetOptions,
    acquire_alphamatting,
    acquire_coco,
    acquire_eval,
    load_eval_manifest,
)
from bafusion.data.coco import CocoFilter
from bafusion.data.download import ChecksumError, DownloadError
from bafusion.data.sources import _builtin_image, dir_backgrounds, dir_foregrounds
from bafusion.errors import InputFileError, UserError

NET = NetOptions(retries=1, backoff=0.01, timeout=10.0, workers=3, progress=False)


def png_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def zip_of(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def alphamatting_zips(n: int = 3, drop_gt: str | None = None) -> dict[str, bytes]:
    """Tiny stand-ins for the two lowres archives: the input archive is flat, the gt archive
    keeps its files in a top folder (both layouts must extract to the same place)."""
    rng = np.random.default_rng(0)
    inputs, gts = {}, {}
    for i in range(1, n + 1):
        img = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        matte = np.repeat(rng.integers(0, 256, (24, 32, 1), dtype=np.uint8), 3, axis=2)  # R=G=B like alphamatting
        inputs[f"GT{i:02d}.png"] = png_bytes(img)
        if f"GT{i:02d}" != drop_gt:
            gts[f"gt_training_lowres/GT{i:02d}.png"] = png_bytes(matte)
    return {"input_training_lowres.zip": zip_of(inputs), "gt_training_lowres.zip": zip_of(gts)}


def serve_alphamatting(server: LocalServer, zips: dict[str, bytes]) -> dict[str, str]:
    for name, data in zips.items():
        server.files[f"datasets/zip/{name}"] = data
    return {name: sha256(data) for name, data in zips.items()}


@pytest.fixture
def server():
    with LocalServer() as s:
        yield s


def test_alphamatting_happy_path_then_skipped(server: LocalServer, tmp_path: Path) -> None:
    sums = serve_alphamatting(server, alphamatting_zips())
    out, cache = tmp_path / "data" / "alphamatting", tmp_path / "cache"
    rec = acquire_alphamatting(out, base_url=server.url("datasets/zip/"), checksums=sums, cache=cache, net=NET)
    assert rec["foregrounds"] == 3 and rec["summary"]["downloaded"] == 2
    fgs = dir_foregrounds(out)  # the dir source reads it
    assert [f.id for f in fgs] == ["GT01", "GT02", "GT03"]
    assert sorted(p.name for p in (out / "gt").iterdir()) == ["GT01.png", "GT02.png", "GT03.png"]
    assert fgs[0].load_matte().shape == (24, 32)
    n = len(server.requests)
    rec2 = acquire_alphamatting(out, base_url=server.url("datasets/zip/"), checksums=sums, cache=cache, net=NET)
    assert len(server.requests) == n and rec2["summary"]["skipped"] == 2  # verified cache, no network
    assert sorted(p.name for p in out.parent.iterdir()) == ["alphamatting"]


def test_alphamatting_published_checksum_is_enforced(server: LocalServer, tmp_path: Path) -> None:
    serve_alphamatting(server, alphamatting_zips())  # our tiny zips are not the published ones
    out, cache = tmp_path / "am", tmp_path / "cache"
    with pytest.raises(ChecksumError) as e:
        acquire_alphamatting(out, base_url=server.url("datasets/zip/"), cache=cache, net=NET)
    assert server.url("datasets/zip/input_training_lowres.zip") in str(e.value)
    assert acquire.ALPHAMATTING_SHA256["input_training_lowres.zip"] in str(e.value)
    assert not out.exists()
    assert list((cache / "alphamatting").iterdir()) == []


def test_alphamatting_missing_matte_leaves_no_output(server: LocalServer, tmp_path: Path) -> None:
    sums = serve_alphamatting(server, alphamatting_zips(drop_gt="GT02"))
    out = tmp_path / "am"
    with pytest.raises(InputFileError, match="GT02"):
        acquire_alphamatting(out, base_url=server.url("datasets/zip/"), checksums=sums, cache=tmp_path / "c", net=NET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_alphamatting_zip_slip_is_refused(server: LocalServer, tmp_path: Path) -> None:
    zips = alphamatting_zips()
    evil = make_zip(tmp_path / "evil.zip", {"GT01.png": b"x", "../../escaped.png": b"x"}).read_bytes()
    zips["input_training_lowres.zip"] = evil
    sums = serve_alphamatting(server, zips)
    work = tmp_path / "work"
    with pytest.raises(UserError, match="refusing to extract member '../../escaped.png'"):
        acquire_alphamatting(work / "am", base_url=server.url("datasets/zip/"), checksums=sums, cache=tmp_path / "c", net=NET)
    assert not (work / "am").exists() and not (tmp_path / "escaped.png").exists()
    assert list(work.iterdir()) == []


def test_alphamatting_unverified_web_page_is_rejected_and_refetched(server: LocalServer, tmp_path: Path) -> None:
    html = b"<!doctype html><html><body>Login required</body></html>"
    zips = {k.replace("lowres", "highres"): v for k, v in alphamatting_zips().items()}  # no published checksum
    for name in zips:
        server.files[f"datasets/zip/{name}"] = html
    cache = tmp_path / "c"
    kw = dict(resolution="highres", base_url=server.url("datasets/zip/"), allow_unverified=True, cache=cache, net=NET)
    with pytest.raises(DownloadError, match="input_training_highres.zip: downloaded file rejected: not a zip archive"):
        acquire_alphamatting(tmp_path / "am", **kw)
    assert list((cache / "alphamatting").iterdir()) == []
    for name in zips:  # an earlier version kept the page in the cache: it is fetched again, not skipped
        (cache / "alphamatting" / name).write_bytes(html)
    serve_alphamatting(server, zips)
    rec = acquire_alphamatting(tmp_path / "am", **kw)
    assert rec["foregrounds"] == 3 and rec["summary"]["downloaded"] == 2


def _spy_testzip(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The archives ``ZipFile.testzip`` reads (and CRCs) whole from now on."""
    calls: list[str] = []
    real = zipfile.ZipFile.testzip

    def spy(self: zipfile.ZipFile) -> str | None:
        calls.append(Path(str(self.filename)).name)
        return real(self)

    monkeypatch.setattr(zipfile.ZipFile, "testzip", spy)
    return calls


def test_a_zip_verified_by_its_checksum_is_not_crc_tested_again(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After its sha256 matched, each alphamatting archive was read whole again by testzip (its
    CRCs: minutes for the multi-GB archives) although the bytes are the published ones; an
    archive without a checksum is still tested (nothing else tells a damaged one)."""
    calls = _spy_testzip(monkeypatch)
    sums = serve_alphamatting(server, alphamatting_zips())
    rec = acquire_alphamatting(tmp_path / "am", base_url=server.url("datasets/zip/"), checksums=sums,
                               cache=tmp_path / "c", net=NET)  # fmt: skip
    assert rec["summary"]["downloaded"] == 2 and calls == []
    zips = {k.replace("lowres", "highres"): v for k, v in alphamatting_zips().items()}  # no published checksum
    serve_alphamatting(server, zips)
    rec = acquire_alphamatting(tmp_path / "am2", resolution="highres", base_url=server.url("datasets/zip/"),
                               allow_unverified=True, cache=tmp_path / "c", net=NET)  # fmt: skip
    assert rec["summary"]["downloaded"] == 2 and sorted(calls) == sorted(f"{n}.part" for n in zips)


def test_alphamatting_local_overrides(tmp_path: Path) -> None:
    zips = alphamatting_zips()
    sums = {n: sha256(d) for n, d in zips.items()}
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name, data in zips.items():
        (mirror / name).write_bytes(data)
    a = acquire_alphamatting(tmp_path / "a", from_dir=mirror, checksums=sums, cache=tmp_path / "c1", net=NET)
    b = acquire_alphamatting(tmp_path / "b", base_url=mirror.as_uri() + "/", checksums=sums, cache=tmp_path / "c2", net=NET)
    c = acquire_alphamatting(tmp_path / "c", from_dir=tmp_path / "a", cache=tmp_path / "c3", net=NET)  # extracted layout
    assert a["foregrounds"] == b["foregrounds"] == c["foregrounds"] == 3
    for d in "abc":
        assert (tmp_path / d / "gt" / "GT03.png").read_bytes() == (tmp_path / "a" / "gt" / "GT03.png").read_bytes()


def _local_sources(root: Path, zips: dict[str, bytes]) -> None:
    """``root/src``: an alphamatting folder of the archives ``zips``, one extracted, COCO
    annotations and the photos, as a project's params would name them (``../src/...``)."""
    (root / "src" / "zips").mkdir(parents=True)
    for name, data in zips.items():
        (root / "src" / "zips" / name).write_bytes(data)
    with zipfile.ZipFile(io.BytesIO(zips["input_training_lowres.zip"])) as zf:
        zf.extractall(root / "src" / "am" / "input")
    with zipfile.ZipFile(io.BytesIO(zips["gt_training_lowres.zip"])) as zf:
        for member in zf.namelist():
            (root / "src" / "am" / "gt").mkdir(parents=True, exist_ok=True)
            (root / "src" / "am" / "gt" / Path(member).name).write_bytes(zf.read(member))
    imgs = root / "src" / "coco" / "train2017"
    imgs.mkdir(parents=True)
    data = coco_dataset(6)
    for rec in data["images"]:
        arr = _builtin_image(SHARP[rec["id"] % len(SHARP)])[: rec["height"] // 2, : rec["width"] // 2]
        (imgs / rec["file_name"]).write_bytes(jpeg_bytes(arr))
    (root / "src" / "coco" / "instances_train2017.json").write_text(json.dumps(data))
    (root / "proj").mkdir()
    (root / "proj" / "dvc.yaml").write_text("stages: {}\n")  # the project's root


def test_the_download_records_are_the_same_in_every_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the records held the resolved paths of the local sources ("source": "/home/a/src/am",
    # file:///home/a/... URLs): data/download/record.json, which digests them, differed
    # between two clones of one project, and so did dvc.lock
    records, zips = [], alphamatting_zips()
    for where in ("one", "two/deeper"):
        _local_sources(tmp_path / where, zips)
        monkeypatch.chdir(tmp_path / where / "proj")
        net = ["--retries", "1", "--backoff", "0.01", "--no-progress", "--cache", "../cache"]
        assert cli(["download-alphamatting", "--out", "am", "--from-dir", "../src/am", *net]) == 0
        sums = [a for n, d in zips.items() for a in ("--checksum", f"{n}={sha256(d)}")]
        assert cli(["download-alphamatting", "--out", "amz", "--from-dir", "../src/zips", *sums, *net]) == 0
        assert cli(["download-coco", "--out", "bg", "--count", "2", "--min-side", "100",
                    "--annotations", "../src/coco/instances_train2017.json",
                    "--images-dir", "../src/coco/train2017", *net]) == 0
        rec = acquire.write_download_record("record.json", "web", {"alphamatting": "am", "backgrounds": "bg",
                                                                   "archives": "amz"})
        records.append({"record": rec, **{f: Path(f).read_text() for f in
                                          ("am/download.json", "amz/download.json", "bg/selection.json")}})
    assert records[0] == records[1]
    assert json.loads(records[0]["am/download.json"])["source"] == "../src/am"
    assert json.loads(records[0]["amz/download.json"])["source"] == "../src/zips"
    selection = json.loads(records[0]["bg/selection.json"])
    assert selection["source"] == {"annotations": "../src/coco/instances_train2017.json",
                                   "images": "../src/coco/train2017"}
    assert all(k["url"] == f"../src/coco/train2017/{k['file']}" for k in selection["kept"])


def test_a_failed_local_photo_and_a_run_from_a_subfolder_are_recorded_as_given(tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """download-coco --images-dir recorded its kept photos as given (../src/coco/train2017/x.jpg)
    but a photo that failed as the file:///home/... URL of the folder resolved here, so the record
    still differed between two checkouts; and a by-hand run in a subfolder of the project
    recorded "../../src/am" without saying from where. Failures are recorded as the kept photos
    are, and a record made outside the project's root says from which folder its relative
    paths start ("relative_to": "sub"); at the root (the pipeline's runs) it has no such key."""
    records, zips = [], alphamatting_zips()
    net = ["--retries", "1", "--backoff", "0.01", "--no-progress", "--cache", "../cache"]
    for where in ("one", "two/deeper"):
        _local_sources(tmp_path / where, zips)
        photos = sorted((tmp_path / where / "src" / "coco" / "train2017").iterdir())
        for q in photos[:3]:
            q.write_bytes(b"not a jpeg")  # fails to read: failure entries
        monkeypatch.chdir(tmp_path / where / "proj")
        assert cli(["download-coco", "--out", "bg", "--count", "2", "--min-side", "100",
                    "--annotations", "../src/coco/instances_train2017.json",
                    "--images-dir", "../src/coco/train2017", "--max-failures", "5", *net]) == 0
        records.append(Path("bg/selection.json").read_text())
    assert records[0] == records[1]
    selection = json.loads(records[0])
    failed = [f["url"] for f in selection["summary"]["failures"]]
    assert failed and set(failed) <= {f"../src/coco/train2017/{q.name}" for q in photos[:3]}, failed
    assert "relative_to" not in selection
    # by hand in a subfolder: the record says where its relative paths start
    (Path("sub")).mkdir()
    monkeypatch.chdir("sub")
    assert cli(["download-alphamatting", "--out", "am", "--from-dir", "../../src/am", *net]) == 0
    rec = json.loads(Path("am/download.json").read_text())
    assert rec["source"] == "../../src/am" and rec["relative_to"] == "sub"
    assert acquire.write_download_record("record.json", "web", {"alphamatting": "am"})["relative_to"] == "sub"
    assert cli(["download-alphamatting", "--out", "am2", "--from-dir", str(tmp_path / "two/deeper/src/am"),
                *net]) == 0
    assert "relative_to" not in json.loads(Path("am2/download.json").read_text())  # absolute: nothing to say


def test_alphamatting_highres_needs_a_checksum(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no published checksum for input_training_highres.zip"):
        acquire_alphamatting(tmp_path / "am", resolution="highres", base_url=str(tmp_path), cache=tmp_path / "c", net=NET)


# ---------------------------------------------------------------------------------------------
# COCO


SHARP = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle")


def serve_coco(server: LocalServer) -> tuple[dict[str, str], str]:
    """Ten COCO records served by ``server``: 5 sharp colour photos, 2 blurred copies, 1 gray,
    1 too small, 1 that always answers HTTP 500. Returns (file name -> kind, annotations md5)."""
    data = coco_dataset(10, base_url=server.base)
    kinds: dict[str, str] = {}
    crops = {n: _builtin_image(n)[:240, :320] for n in SHARP}
    plan = list(SHARP) + ["blur:astronaut", "blur:coffee", "gray", "small", "broken"]
    for rec, what in zip(data["images"], plan):
        fn = rec["file_name"]
        if what.startswith("blur:"):
            arr = blur(crops[what[5:]], 2.0)
        elif what == "gray":
            arr = np.repeat(crops["coffee"].mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
        elif what == "small":
            arr = crops["rocket"][:60, :80]
        else:
            arr = crops.get(what, crops["chelsea"])
        rec["height"], rec["width"] = arr.shape[:2]
        kinds[fn] = what.split(":")[0] if ":" in what else ("sharp" if what in SHARP else what)
        if what == "broken":
            server.fail[f"train2017/{fn}"] = [500] * 100
        else:
            server.files[f"train2017/{fn}"] = jpeg_bytes(arr)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("annotations/instances_train2017.json", json.dumps(data))
        caps = {"images": data["images"], "annotations": [], "info": {}, "licenses": []}
        zf.writestr("annotations/captions_train2017.json", json.dumps(caps))
    server.files["annotations/annotations_trainval2017.zip"] = buf.getvalue()
    return kinds, "md5:" + hashlib.md5(buf.getvalue()).hexdigest()


def cli(argv: list[str]) -> int:
    """Run one of the download subcommands the way ``bafusion`` does."""
    parser = argparse.ArgumentParser(prog="bafusion")
    sub = parser.add_subparsers(dest="command", required=True)
    cli_download.register(sub)
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)


def test_coco_end_to_end_through_the_cli(server: LocalServer, tmp_path: Path) -> None:
    kinds, md5 = serve_coco(server)
    common = [
        "--count", "3", "--oversample", "3", "--min-side", "100", "--seed", "1",
        "--annotations-url", server.url("annotations/annotations_trainval2017.zip"),
        "--annotations-checksum", md5, "--cache", str(tmp_path / "cache"),
        "--retries", "1", "--backoff", "0.01", "--workers", "3", "--no-progress",
    ]  # fmt: skip
    assert cli(["download-coco", "--out", str(tmp_path / "bg"), *common]) == 0
    kept = sorted(p.name for p in (tmp_path / "bg").glob("*.jpg"))
    assert len(kept) == 3 and all(kinds[k] == "sharp" for k in kept)
    sel = json.loads((tmp_path / "bg" / "selection.json").read_text())
    assert sorted(k["file"] for k in sel["kept"]) == kept
    reasons = {d["file"]: d["reason"] for d in sel["dropped"]}
    gray = [fn for fn, k in kinds.items() if k == "gray"][0]
    assert reasons.get(gray) == "gray"
    assert all(reasons[fn] == "less sharp than the kept images" for fn, k in kinds.items() if k == "blur" and fn in reasons)
    assert not any(kinds[d] == "small" for d in reasons)  # filtered before download
    broken = [fn for fn, k in kinds.items() if k == "broken"][0]
    # a pool of 9 takes every candidate: the broken one was retried once, then reported
    assert sel["summary"]["failed"] == 1
    assert sel["summary"]["failures"][0]["url"] == server.url(f"train2017/{broken}")
    assert "HTTP 500" in sel["summary"]["failures"][0]["error"]
    assert len(server.requests_for(f"train2017/{broken}")) == 2
    assert len(sel["kept"]) + len(sel["dropped"]) == 8  # 5 sharp + 2 blurred + 1 gray measured
    assert sum(1 for fn in reasons if kinds[fn] == "blur") == 2
    assert [b.id for b in dir_backgrounds(tmp_path / "bg")] == [Path(k).stem for k in kept]

    # the same seed gives the same selection, from the verified cache (no image re-fetched)
    before = {p for p, _ in server.requests if p.endswith(".jpg") and p.split("/")[-1] != broken}
    n_before = sum(1 for p, _ in server.requests if p.split("/")[-1] != broken)
    assert cli(["download-coco", "--out", str(tmp_path / "bg2"), *common]) == 0
    assert sorted(p.name for p in (tmp_path / "bg2").glob("*.jpg")) == kept
    assert sum(1 for p, _ in server.requests if p.split("/")[-1] != broken) == n_before
    assert before  # images did come from the server the first time


def test_coco_annotation_checksum_mismatch(server: LocalServer, tmp_path: Path) -> None:
    serve_coco(server)
    with pytest.raises(ChecksumError, match="md5 mismatch"):
        acquire_coco(
            tmp_path / "bg",
            count=2,
            annotations_url=server.url("annotations/annotations_trainval2017.zip"),
            cache=tmp_path / "cache",
            net=NET,
        )  # the official md5 does not match the test's zip
    assert not (tmp_path / "bg").exists()
    assert list((tmp_path / "cache" / "coco").iterdir()) == []


def test_coco_unverified_annotations_that_are_a_web_page_are_fetched_again(server: LocalServer, tmp_path: Path) -> None:
    serve_coco(server)
    url = server.url("annotations/annotations_trainval2017.zip")
    good = server.files["annotations/annotations_trainval2017.zip"]
    html = b"<!doctype html><html><body>Login required</body></html>"
    server.files["annotations/annotations_trainval2017.zip"] = html
    cache = tmp_path / "cache"
    kw = dict(count=2, flt=CocoFilter(min_side=100), annotations_url=url, annotations_checksum=None, cache=cache, net=NET)
    with pytest.raises(DownloadError, match="rejected: neither a zip archive nor JSON"):
        acquire_coco(tmp_path / "bg", **kw)
    assert list((cache / "coco").iterdir()) == []
    (cache / "coco" / "annotations_trainval2017.zip").write_bytes(html)  # cached by an earlier version
    server.files["annotations/annotations_trainval2017.zip"] = good
    rec = acquire_coco(tmp_path / "bg", **kw)
    assert len(rec["kept"]) == 2 and (cache / "coco" / "annotations_trainval2017.zip").read_bytes() == good


def test_coco_annotations_verified_by_their_checksum_are_not_crc_tested_again(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _spy_testzip(monkeypatch)
    _, md5 = serve_coco(server)
    kw = dict(count=2, flt=CocoFilter(min_side=100), annotations_url=server.url("annotations/annotations_trainval2017.zip"),
              net=NET)  # fmt: skip
    assert len(acquire_coco(tmp_path / "bg", annotations_checksum=md5, cache=tmp_path / "c1", **kw)["kept"]) == 2
    assert calls == []
    assert len(acquire_coco(tmp_path / "bg2", annotations_checksum=None, cache=tmp_path / "c2", **kw)["kept"]) == 2
    assert calls == ["annotations_trainval2017.zip.part"]


def test_coco_local_override_and_too_few(tmp_path: Path) -> None:
    imgs = tmp_path / "train2017"
    imgs.mkdir()
    data = coco_dataset(12)
    for rec in data["images"][:6]:  # only half of the images are present locally
        name = SHARP[rec["id"] % len(SHARP)]
        arr = _builtin_image(name)[: rec["height"] // 2, : rec["width"] // 2]
        (imgs / rec["file_name"]).write_bytes(jpeg_bytes(arr))
    ann = tmp_path / "instances_train2017.json"
    ann.write_text(json.dumps(data))
    flt = CocoFilter(min_side=100)
    rec = acquire_coco(tmp_path / "bg", count=2, flt=flt, annotations=ann, images_dir=imgs, cache=tmp_path / "c", net=NET)
    # where each kept photo is from: the folder as given (it was a file:// URL of the resolved path)
    assert len(rec["kept"]) == 2 and all(k["url"] == (imgs / k["file"]).as_posix() for k in rec["kept"])
    with pytest.raises(UserError, match="only 5 usable backgrounds of the 6 requested"):
        # ids 1-6 are present locally; id 5 (200x150) fails min_side=151: 5 candidates for 6
        acquire_coco(
            tmp_path / "bg3", count=6, flt=CocoFilter(min_side=151), annotations=ann, images_dir=imgs,
            cache=tmp_path / "c", net=NET,
        )  # fmt: skip
    assert not (tmp_path / "bg3").exists()


@pytest.mark.parametrize("bad", ["../../escaped.jpg", "ABS", "sub/x.jpg", "..", "a\\b.jpg", 7])
def test_coco_file_name_outside_the_cache_is_refused(server: LocalServer, tmp_path: Path, bad: object) -> None:
    if bad == "ABS":
        bad = str(tmp_path / "abs-escaped.jpg")
    data = coco_dataset(4, base_url=server.base)
    for rec in data["images"]:
        server.files[f"train2017/{rec['file_name']}"] = jpeg_bytes(_builtin_image("coffee")[:120, :160])
    data["images"][2]["file_name"] = bad
    if isinstance(bad, str):
        server.files[f"train2017/{bad}"] = jpeg_bytes(_builtin_image("coffee")[:120, :160])
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    work = tmp_path / "work"
    with pytest.raises(InputFileError, match=r"ann\.json: image record 3 has file_name .*plain file name") as e:
        acquire_coco(work / "bg", count=2, flt=CocoFilter(min_side=100), annotations=ann, cache=work / "cache", net=NET)
    assert repr(bad) in str(e.value)
    assert server.requests == []  # refused before any download
    assert not work.exists() and not (tmp_path / "escaped.jpg").exists()
    assert not (tmp_path / "abs-escaped.jpg").exists()


@pytest.mark.parametrize("split", ["../../ESCAPED", "/abs", "a/b", "..", ".", "", "train 2017", "x\\y"])
def test_coco_split_that_is_no_plain_name_is_refused(tmp_path: Path, split: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`--split ../../ESCAPED` wrote the photos to <cache>/../ESCAPED, outside the cache."""
    from bafusion.config import validate_params
    from bafusion.schema import ParamsError

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    data = coco_dataset(4)
    for rec in data["images"]:
        (imgs / rec["file_name"]).write_bytes(jpeg_bytes(_builtin_image("coffee")[:120, :160]))
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    work = tmp_path / "w" / "x"
    with pytest.raises(UserError, match=rf"coco split {re.escape(repr(split))}: expected a plain COCO split name"):
        acquire_coco(work / "bg", count=2, flt=CocoFilter(split=split, min_side=100), annotations=ann, images_dir=imgs,
                     cache=work / "cache", net=NET)  # fmt: skip
    with pytest.raises(SystemExit) as e:
        cli(["download-coco", "--out", str(work / "bg"), "--count", "2", "--split", split, "--annotations", str(ann),
             "--images-dir", str(imgs), "--cache", str(work / "cache"), "--no-progress"])  # fmt: skip
    assert e.value.code == 2 and "--split" in capsys.readouterr().err
    assert not (tmp_path / "w").exists() and not (tmp_path / "ESCAPED").exists()
    with pytest.raises(ParamsError, match=r"download\.coco\.split: .*a COCO split name such as train2017"):
        validate_params({"download": {"coco": {"split": split}}}, "params.yaml")
    assert validate_params({"download": {"coco": {"split": "val2017"}}}, "p")["download"]["coco"]["split"] == "val2017"


@pytest.mark.parametrize("scheme", ["file", "ftp", "data"])
def test_coco_url_that_is_no_http_url_is_refused(tmp_path: Path, scheme: str) -> None:
    """A `file:///...` coco_url in annotations was copied into the backgrounds."""
    from bafusion.data.coco import image_url

    local = tmp_path / "secret.jpg"
    local.write_bytes(jpeg_bytes(_builtin_image("coffee")[:120, :160]))
    data = coco_dataset(4, base_url="http://127.0.0.1:9/")
    bad = {"file": local.as_uri(), "ftp": "ftp://127.0.0.1:9/a.jpg", "data": "data:image/jpeg;base64,AAAA"}[scheme]
    data["images"][1]["coco_url"] = bad
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    work = tmp_path / "work"
    with pytest.raises(InputFileError, match=rf"ann\.json: image record 2 has coco_url {re.escape(repr(bad))}: "
                                             r"expected an http\(s\) URL"):
        acquire_coco(work / "bg", count=1, flt=CocoFilter(min_side=100), annotations=ann, cache=work / "cache", net=NET)
    assert not work.exists()
    with pytest.raises(UserError, match=r"COCO image 2 has coco_url .*expected an http\(s\) URL"):
        image_url(data["images"][1], "train2017")
    # a mirror or a local folder replaces the coco_url: then it is not used, nor checked
    assert image_url(data["images"][1], "train2017", "http://mirror.local/").startswith("http://mirror.local/")


def test_coco_records_sharing_a_file_name_are_kept_once(server: LocalServer, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Two records of one file_name both counted as kept ("kept 2", selection.json listing the
    file twice) while one photo was on disk; over http two threads wrote the same .part."""
    data = coco_dataset(4, base_url=server.base)
    for rec, name in zip(data["images"], SHARP):
        server.files[f"train2017/{rec['file_name']}"] = jpeg_bytes(_builtin_image(name)[:120, :160])
    twin = dict(data["images"][0], id=99)  # same file_name as record 1
    data["images"].append(twin)
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps(data))
    rec = acquire_coco(tmp_path / "bg", count=4, oversample=1.0, flt=CocoFilter(min_side=100), annotations=ann,
                       cache=tmp_path / "c", net=NET)  # fmt: skip
    files = [k["file"] for k in rec["kept"]]
    assert len(files) == len(set(files)) == 4 == len(list((tmp_path / "bg").glob("*.jpg")))
    assert "coco: 1 image record(s) whose file_name an earlier candidate has were dropped" in capsys.readouterr().err
    assert len(server.requests_for(f"train2017/{twin['file_name']}")) == 1


# ---------------------------------------------------------------------------------------------
# Evaluation pairs


def test_eval_from_server_with_its_manifest(server: LocalServer, tmp_path: Path) -> None:
    files = {
        "lytro/lytro-01-A.jpg": jpeg_bytes(_builtin_image("coffee")[:40, :40]),
        "lytro/lytro-01-B.jpg": jpeg_bytes(_builtin_image("chelsea")[:40, :40]),
        "classic/g01-clock-A.png": png_bytes(np.zeros((8, 8), np.uint8)),
        "classic/g01-clock-B.png": png_bytes(np.full((8, 8), 9, np.uint8)),
    }
    for name, data in files.items():
        server.files[f"mfif/{name}"] = data
    manifest = tmp_path / "manifest.json"
    entries = [{"name": n, "set": n.split("/")[0], "sha256": hashlib.sha256(d).hexdigest()} for n, d in files.items()]
    manifest.write_text(json.dumps({"files": entries}))
    out = tmp_path / "eval"
    assert cli(["download-eval", "--out", str(out), "--base-url", server.url("mfif/"), "--manifest", str(manifest),
                "--cache", str(tmp_path / "cache"), "--no-progress", "--retries", "0"]) == 0  # fmt: skip
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    rec = acquire_eval(tmp_path / "lytro-only", base_url=server.url("mfif/"), manifest=manifest, sets=("lytro",),
                       cache=tmp_path / "cache", net=NET)  # fmt: skip
    assert rec["summary"]["skipped"] == 2 and not (tmp_path / "lytro-only" / "classic").exists()

    server.files["mfif/lytro/lytro-01-B.jpg"] = b"tampered"
    with pytest.raises(UserError) as e:
        acquire_eval(tmp_path / "eval2", base_url=server.url("mfif/"), manifest=manifest, cache=tmp_path / "c2", net=NET)
    assert server.url("mfif/lytro/lytro-01-B.jpg") in str(e.value) and "sha256 mismatch" in str(e.value)
    assert not (tmp_path / "eval2").exists()


def test_eval_download_is_cut_off_at_the_manifest_size(server: LocalServer, tmp_path: Path) -> None:
    """The manifest's sizes went unused: a mirror could send any amount before the checksum
    was checked after the last byte."""
    good = jpeg_bytes(_builtin_image("coffee")[:40, :40])
    server.files["mfif/lytro/a.jpg"] = good + b"\0" * 100_000
    manifest = tmp_path / "manifest.json"
    entry = {"name": "lytro/a.jpg", "set": "lytro", "size": len(good), "sha256": hashlib.sha256(good).hexdigest()}
    manifest.write_text(json.dumps({"files": [entry]}))
    with pytest.raises(UserError, match=rf"lytro/a\.jpg: the server announces {len(good) + 100_000} bytes, more than "
                                        rf"the expected size \({len(good)} bytes\)"):
        acquire_eval(tmp_path / "e", base_url=server.url("mfif/"), manifest=manifest, sets=("lytro",),
                     cache=tmp_path / "c", net=NET)  # fmt: skip
    assert not (tmp_path / "e").exists() and not list((tmp_path / "c").rglob("a.jpg*"))
    assert len(server.requests) == 1  # refused, not retried


def test_eval_rerun_replaces_its_output_but_never_a_folder_of_the_users(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """download-eval --out mydata deleted mydata/notes.txt and mydata/raw/ (exit 0); an earlier
    output of the command (its download.json) is still replaced, even with a set of another name."""
    from bafusion.cli import main

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    src = tmp_path / "src"
    files = {"lytro/a.png": png_bytes(np.zeros((8, 8), np.uint8)), "other/b.png": png_bytes(np.ones((8, 8), np.uint8))}
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    manifest = tmp_path / "manifest.json"
    entries = [{"name": n, "set": n.split("/")[0].replace("other", "classic"), "sha256": hashlib.sha256(d).hexdigest()}
               for n, d in files.items()]
    manifest.write_text(json.dumps({"files": entries}))
    mine = tmp_path / "mydata"
    (mine / "raw").mkdir(parents=True)
    (mine / "notes.txt").write_text("precious")
    argv = ["download-eval", "--from-dir", str(src), "--manifest", str(manifest), "--cache", str(tmp_path / "c"),
            "--no-progress", "--out"]
    assert main([*argv, str(mine)]) == 2
    assert "no earlier output of this command (no download.json)" in capsys.readouterr().err
    assert (mine / "notes.txt").read_text() == "precious" and (mine / "raw").is_dir()
    out = tmp_path / "eval"
    assert main([*argv, str(out)]) == 0
    assert json.loads((out / "download.json").read_text())["folders"] == ["lytro", "other"]
    assert main([*argv, str(out)]) == 0  # its own earlier output: replaced
    assert sorted(p.name for p in out.iterdir()) == ["download.json", "lytro", "other"]
    # a record written before 'folders' existed (review: "holds files this command did not write:
    # other", which it wrote): it vouches for the folder alone
    record = json.loads((out / "download.json").read_text())
    del record["folders"]
    (out / "download.json").write_text(json.dumps(record))
    assert main([*argv, str(out)]) == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["download.json", "lytro", "other"]


def test_download_eval_and_alphamatting_never_replace_each_others_folder(
    server: LocalServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both commands mark --out with a download.json: download-eval --out X replaced the
    alphamatting set download-alphamatting had put in X (exit 0), and the other way round, so a
    mistyped path lost a download. The record now says its kind (an older one's is read from its
    content), and each command replaces only its own kind of folder."""
    from bafusion.cli import main

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    sums = serve_alphamatting(server, alphamatting_zips())
    am_argv = ["download-alphamatting", "--base-url", server.url("datasets/zip/"), "--cache", str(tmp_path / "c"),
               "--no-progress", "--retries", "0", *[x for n, d in sums.items() for x in ("--checksum", f"{n}={d}")]]
    src = tmp_path / "src"
    (src / "lytro").mkdir(parents=True)
    (src / "lytro" / "a.png").write_bytes(png_bytes(np.zeros((8, 8), np.uint8)))
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"files": [{"name": "lytro/a.png", "set": "lytro",
                                               "sha256": hashlib.sha256((src / "lytro" / "a.png").read_bytes()).hexdigest()}]}))
    ev_argv = ["download-eval", "--from-dir", str(src), "--manifest", str(manifest), "--sets", "lytro",
               "--cache", str(tmp_path / "c"), "--no-progress"]
    am, ev = tmp_path / "am", tmp_path / "eval"
    assert main([*am_argv, "--out", str(am)]) == 0
    assert main([*ev_argv, "--out", str(ev)]) == 0
    capsys.readouterr()
    for old in (False, True):
        if old:  # records written before the kind was: decided from what they hold
            for folder in (am, ev):
                rec = json.loads((folder / "download.json").read_text())
                del rec["kind"]
                (folder / "download.json").write_text(json.dumps(rec))
        assert main([*ev_argv, "--out", str(am)]) == 2, "the alphamatting set was replaced"
        err = capsys.readouterr().err
        assert f"{am}: " in err and "download-alphamatting" in err and "input/, gt/" in err and "3 foregrounds" in err
        assert "download-eval replaces the folder whole and would delete it" in err, err
        assert main([*am_argv, "--out", str(ev)]) == 2
        err = capsys.readouterr().err
        assert f"{ev}: " in err and "download-eval" in err and "lytro/" in err and "1 file" in err
        assert "download-alphamatting replaces the folder whole and would delete it" in err, err
        assert sorted(p.name for p in am.iterdir()) == ["download.json", "gt", "input"]
        assert sorted(p.name for p in ev.iterdir()) == ["download.json", "lytro"]
        assert main([*am_argv, "--out", str(am)]) == 0 and main([*ev_argv, "--out", str(ev)]) == 0  # their own
        assert json.loads((am / "download.json").read_text())["kind"] == "alphamatting"
        assert json.loads((ev / "download.json").read_text())["kind"] == "eval"


@pytest.mark.parametrize(("doc", "kind"), [
    ({"kind": "eval", "foregrounds": 3}, "eval"), ({"foregrounds": 3}, "alphamatting"),
    ({"sets": ["lytro"]}, "eval"), ({"files": 2}, "eval"), ({}, None), ([], None), ({"kind": "later"}, "later"),
])
def test_download_kind_of_a_record(doc: object, kind: str | None, tmp_path: Path) -> None:
    from bafusion.preflight import check_output_dir, download_kind

    assert download_kind(doc) == kind
    (tmp_path / "download.json").write_text(json.dumps(doc))
    for ours in ("alphamatting", "eval"):
        if kind in (None, ours):
            check_output_dir(tmp_path, replaced=True, marker="download.json", kind=ours)
        else:
            with pytest.raises(UserError, match=f"{tmp_path}: the output folder holds "):
                check_output_dir(tmp_path, replaced=True, marker="download.json", kind=ours)


def test_eval_needs_a_source_and_known_sets(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="needs a source"):
        acquire_eval(tmp_path / "e", cache=tmp_path / "c", net=NET)
    with pytest.raises(UserError, match="unknown eval set"):
        acquire_eval(tmp_path / "e", base_url="http://127.0.0.1:9/", sets=("nope",), cache=tmp_path / "c", net=NET)


@pytest.mark.parametrize(
    "manifest, problem",
    [
        ({"nofiles": 1}, "not an eval manifest"),
        ([1, 2], "not an eval manifest"),
        ({"files": {"name": "lytro/a.jpg"}}, "not an eval manifest"),
        ({"files": [{"name": "lytro/a.jpg", "sha256": "0" * 64}, 5]}, "bad manifest entry 5: expected an object"),
        ({"files": [{"name": 5, "sha256": "00"}]}, "'name' must be a relative file name"),
        ({"files": [{"sha256": "0" * 64}]}, "'name' must be a relative file name"),
        ({"files": [{"name": "lytro/./../x.jpg", "sha256": "0" * 64}]}, "without '.', '..'"),
        ({"files": [{"name": "/etc/x.jpg", "sha256": "0" * 64}]}, "without '.', '..'"),
        ({"files": [{"name": "lytro/a.jpg", "sha256": "zz"}]}, "'sha256' must be 64 hexadecimal digits"),
        ({"files": [{"name": "lytro/a.jpg"}]}, "'sha256' must be 64 hexadecimal digits"),
        ({"files": [{"name": "lytro/a.jpg", "sha256": "0" * 64, "set": ["lytro"]}]}, "'set' must be a string"),
        ({"files": [{"name": "lytro/a.jpg", "sha256": "0" * 64}] * 2}, "listed twice"),
        ({"files": [{"name": "lytro/a.jpg", "sha256": "0" * 64, "size": "12"}]}, "'size' must be the file's size"),
        ({"files": [{"name": "lytro/a.jpg", "sha256": "0" * 64, "size": -1}]}, "'size' must be the file's size"),
    ],
)
def test_malformed_eval_manifest_is_refused_naming_it(tmp_path: Path, manifest: object, problem: str) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputFileError) as e:
        acquire_eval(tmp_path / "e", base_url="http://127.0.0.1:9/", manifest=path, cache=tmp_path / "c", net=NET)
    assert str(e.value).startswith(f"{path}: ") and problem in str(e.value)
    assert not (tmp_path / "e").exists()


def test_eval_sets_without_a_set_key_come_from_the_folder(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps({"files": [{"name": "lytro/a.jpg", "sha256": "0" * 64}]}))
    with pytest.raises(UserError, match=r"unknown eval set\(s\) \['classic'\]; the manifest has \['lytro'\]"):
        acquire_eval(tmp_path / "e", base_url="http://127.0.0.1:9/", manifest=path, cache=tmp_path / "c", net=NET)


def test_packaged_eval_manifest() -> None:
    m = load_eval_manifest()
    names = [f["name"] for f in m["files"]]
    assert len([n for n in names if n.startswith("lytro/")]) == 40  # 20 pairs
    assert {f"lytro/lytro-{i:02d}-{s}.jpg" for i in range(1, 21) for s in "AB"} <= set(names)
    for pair in ("g01-clock", "g03-lab", "books", "flower"):  # the paper's four classic scenes
        assert any(n.startswith(f"classic/{pair}-A") for n in names)
    assert all(len(f["sha256"]) == 64 for f in m["files"])


def test_eval_from_shared_folder_matches_the_manifest(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "eval"
    if not src.is_dir():
        pytest.skip(f"{src} not found")
    rec = acquire_eval(tmp_path / "eval", from_dir=src, cache=tmp_path / "c", net=NET)
    assert rec["files"] == 64
    assert (tmp_path / "eval" / "lytro" / "lytro-20-B.jpg").read_bytes() == (src / "lytro" / "lytro-20-B.jpg").read_bytes()


def test_alphamatting_published_digests_and_sizes_are_those_the_shared_data_records(shared_data: Path) -> None:
    """The code's published SHA-256 and sizes of the alphamatting archives are the ones the
    shared data's README records beside the extracted set. (This test was
    ``test_alphamatting_shared_archives_if_present``, which hashed ``*_training_lowres.zip``
    under the shared data and never ran: the shared data holds the extracted folders, not the
    archives; zipping those folders is :func:`test_real_alphamatting_images_round_trip`'s.)"""
    readme = shared_data.parent / "README.md"
    if not readme.is_file():
        pytest.skip(f"{readme} not found")
    recorded = {m.group(1): (int(m.group(2).replace(",", "")), m.group(3)) for m in re.finditer(
        r"`(\w+_training_lowres\.zip)` ([\d,]+) bytes,\s+`([0-9a-f]{64})`", readme.read_text(encoding="utf-8"))}
    assert recorded == {name: (acquire.ALPHAMATTING_SIZE[name], digest)
                        for name, digest in acquire.ALPHAMATTING_SHA256.items()}


def test_download_error_names_url(server: LocalServer, tmp_path: Path) -> None:
    server.fail["datasets/zip/input_training_lowres.zip"] = [503] * 5
    with pytest.raises(DownloadError) as e:
        acquire_alphamatting(tmp_path / "am", base_url=server.url("datasets/zip/"), cache=tmp_path / "c", net=NET)
    assert "input_training_lowres.zip" in str(e.value) and "503" in str(e.value)
    assert not (tmp_path / "am").exists()


def test_download_record(tmp_path: Path) -> None:
    d = tmp_path / "bg"
    d.mkdir()
    (d / "a.jpg").write_bytes(b"1")
    (d / ".snakemake_timestamp").write_bytes(b"")
    assert cli(["download-record", "--source", "web", "--out", str(tmp_path / "r.json"), f"backgrounds={d}"]) == 0
    rec = json.loads((tmp_path / "r.json").read_text())
    assert rec["source"] == "web" and rec["folders"]["backgrounds"]["files"] == 1
    first = rec["folders"]["backgrounds"]["sha256"]
    (d / "a.jpg").write_bytes(b"2")  # other content, other digest
    acquire.write_download_record(tmp_path / "r.json", "web", {"backgrounds": d})
    assert json.loads((tmp_path / "r.json").read_text())["folders"]["backgrounds"]["sha256"] != first
    assert cli(["download-record", "--source", "builtin", "--out", str(tmp_path / "b.json")]) == 0
    assert json.loads((tmp_path / "b.json").read_text()) == {"source": "builtin", "folders": {}}


def test_download_record_reads_a_folder_given_with_a_tilde_from_the_home(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """download-record --source web 'backgrounds=~/bg' (quoted, or after '=', where a shell may
    leave ~ alone) said "~/bg: folder not found": the folder is the home folder's, and the record
    names it as given, the same in every home."""
    home = tmp_path / "home"
    (home / "bg").mkdir(parents=True)
    (home / "bg" / "a.jpg").write_bytes(b"1")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    assert cli(["download-record", "--source", "web", "--out", "r.json", "backgrounds=~/bg"]) == 0
    rec = json.loads(Path("r.json").read_text())
    assert rec["folders"]["backgrounds"]["path"] == "~/bg" and rec["folders"]["backgrounds"]["files"] == 1
    assert "relative_to" not in rec and not Path("~").exists()


def test_download_record_refuses_an_unknown_source(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--source is params data.source: a value outside the schema's enum was written into the
    record (exit 0)."""
    from bafusion.cli import main
    from bafusion.schema import load_schema

    with pytest.raises(SystemExit) as e:
        main(["download-record", "--source", "bogus", "--out", str(tmp_path / "r.json")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "invalid choice: 'bogus'" in err and "'web'" in err
    assert not (tmp_path / "r.json").exists()
    enum = load_schema()["properties"]["data"]["properties"]["source"]["enum"]
    assert list(cli_download.DATA_SOURCES) == enum  # the choices are the schema's


def test_default_cache_honours_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BAFUSION_CACHE", str(tmp_path / "c"))
    assert acquire.default_cache() == tmp_path / "c"
    monkeypatch.delenv("BAFUSION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert acquire.default_cache() == tmp_path / "xdg" / "bafusion" / "downloads"


def test_real_alphamatting_images_round_trip(shared_data: Path, server: LocalServer, tmp_path: Path) -> None:
    """The 27 real foregrounds, zipped like the official archives and served, come out as a
    folder the dir source reads, byte for byte."""
    src = shared_data / "train" / "alphamatting"
    if not (src / "input").is_dir():
        pytest.skip(f"{src} not found")
    zips = {}
    for sub, name in (("input", "input_training_lowres.zip"), ("gt", "gt_training_lowres.zip")):
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
            for p in sorted((src / sub).glob("*.png")):
                zf.write(p, p.name)
        zips[name] = buf.getvalue()
    sums = serve_alphamatting(server, zips)
    out = tmp_path / "am"
    rec = acquire_alphamatting(out, base_url=server.url("datasets/zip/"), checksums=sums, cache=tmp_path / "c", net=NET)
    assert rec["foregrounds"] == len(list((src / "input").glob("*.png"))) == 27
    assert (out / "gt" / "GT27.png").read_bytes() == (src / "gt" / "GT27.png").read_bytes()


@pytest.mark.parametrize("legacy", [False, True])
def test_a_download_alphamatting_rerun_keeps_what_it_copied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str], legacy: bool) -> None:
    """--from-dir copies input/ and gt/ whole (a README.txt, a gt/old/ folder too), but the check
    of the folder it replaces vouched only for the images directly in them: an identical rerun
    was refused, "holds files this command did not write: gt/old/GT01.png, input/README.txt".
    The record lists what the command wrote (one of an earlier version: what its source folder
    holds); a file of the user's added later is still refused."""
    from bafusion.cli import main

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    src, out = tmp_path / "am2", tmp_path / "am"
    rng = np.random.default_rng(0)
    for sub in ("input", "gt"):
        (src / sub).mkdir(parents=True)
        for i in (1, 2):
            (src / sub / f"GT{i:02d}.png").write_bytes(png_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    (src / "input" / "README.txt").write_text("from the site")
    (src / "gt" / "old").mkdir()
    (src / "gt" / "old" / "GT01.png").write_bytes((src / "gt" / "GT01.png").read_bytes())
    (src / "gt" / "[x] notes.TXT").write_text("x")
    argv = ["download-alphamatting", "--from-dir", str(src), "--out", str(out), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    assert (out / "input" / "README.txt").is_file() and (out / "gt" / "old" / "GT01.png").is_file()
    if legacy:  # a record of a version that did not list the files: its source folder tells
        rec = json.loads((out / "download.json").read_text())
        del rec["written"]
        (out / "download.json").write_text(json.dumps(rec))
    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr().err
    for mine in ("input/MY-NOTES.txt", "gt/old/MY-EDIT.png"):
        (out / mine).write_text("mine")
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert f"holds files this command did not write: {mine};" in err, err
        (out / mine).unlink()
    assert main(argv) == 0, capsys.readouterr().err



def test_sources_given_with_a_tilde_are_recorded_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # --from-dir='~/src/am' (params download.alphamatting.from_dir: ~/src/am, data.dir...) was
    # expanded where parsed: download.json, selection.json and prepare's manifest.json held
    # /home/<user>/src/..., so two users with the same params and data had a different
    # data/download/record.json, data/prepared/manifest.json and dvc.lock
    from bafusion.cli import main

    outputs, zips = [], alphamatting_zips()
    for home in ("homeA", "homeB/deeper"):
        _local_sources(tmp_path / home, zips)
        monkeypatch.setenv("HOME", str(tmp_path / home))
        monkeypatch.chdir(tmp_path / home / "proj")
        net = ["--retries", "1", "--backoff", "0.01", "--no-progress", "--cache", "~/cache"]
        assert cli(["download-alphamatting", "--out", "am", "--from-dir=~/src/am", *net]) == 0
        sums = [a for n, d in zips.items() for a in ("--checksum", f"{n}={sha256(d)}")]
        assert cli(["download-alphamatting", "--out", "amz", "--base-url=~/src/zips", *sums, *net]) == 0
        assert cli(["download-coco", "--out", "bg", "--count", "2", "--min-side", "100",
                    "--annotations=~/src/coco/instances_train2017.json", "--images-dir=~/src/coco/train2017", *net]) == 0
        assert main(["prepare", "--source", "dir", "--alphamatting=~/src/am", "--backgrounds-dir=~/src/coco/train2017",
                     "--min-background-side", "16", "--out", "prep"]) == 0
        rec = acquire.write_download_record("record.json", "web", {"alphamatting": "am", "backgrounds": "bg",
                                                                   "archives": "amz"})
        outputs.append({"record": rec, **{f: Path(f).read_bytes() for f in
                                          ("am/download.json", "amz/download.json", "bg/selection.json",
                                           "prep/manifest.json")}})
        assert not (tmp_path / home / "proj" / "~").exists()
    assert outputs[0] == outputs[1]
    assert json.loads(outputs[0]["am/download.json"])["source"] == "~/src/am"
    assert json.loads(outputs[0]["amz/download.json"])["source"] == "~/src/zips"
    assert json.loads(outputs[0]["bg/selection.json"])["source"] == {
        "annotations": "~/src/coco/instances_train2017.json", "images": "~/src/coco/train2017"}
    assert b'"~/src/am/input/GT01.png"' in outputs[0]["prep/manifest.json"]


def test_eval_from_a_local_folder_names_its_files_by_path_not_by_file_url(tmp_path: Path, capsys) -> None:
    """download-eval --base-url FOLDER (or --from-dir) named a missing or oversized local file by
    its file:// URL ("FAILED file:///home/me/ev/lytro/a.jpg: local file not found: /home/me/...");
    the messages now show the plain path, once."""
    good = jpeg_bytes(_builtin_image("coffee")[:40, :40])
    src = tmp_path / "ev dir"
    (src / "lytro").mkdir(parents=True)
    (src / "lytro" / "b.jpg").write_bytes(good + b"\0" * 10)
    manifest = tmp_path / "manifest.json"
    entries = [{"name": f"lytro/{n}.jpg", "set": "lytro", "size": len(good), "sha256": hashlib.sha256(good).hexdigest()}
               for n in ("a", "b")]
    manifest.write_text(json.dumps({"files": entries}))
    with pytest.raises(UserError) as e:
        acquire_eval(tmp_path / "e", base_url=str(src), manifest=manifest, sets=("lytro",), cache=tmp_path / "c",
                     net=NET)
    err = capsys.readouterr().err
    assert str(e.value) == f"2 of 2 eval files failed; first: {src / 'lytro' / 'a.jpg'}: local file not found"
    assert f"  FAILED {src / 'lytro' / 'a.jpg'}: local file not found\n" in err, err
    assert f"  FAILED {src / 'lytro' / 'b.jpg'}: holds {len(good) + 10} bytes, more than the expected size" in err, err
    assert "file:" not in err + str(e.value)
    with pytest.raises(DownloadError) as d:  # fetch's own error too; the error keeps the URL
        acquire.fetch((src / "lytro" / "a.jpg").as_uri(), tmp_path / "x.jpg")
    assert str(d.value) == f"{src / 'lytro' / 'a.jpg'}: local file not found"
    assert d.value.url == (src / "lytro" / "a.jpg").as_uri()


def test_a_path_given_with_a_tilde_needs_no_relative_to(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A record's path given as ``~/photos`` (--from-dir '~/photos', download.eval.from_dir) is the
    home folder's, as absolute as /home/me/photos: a by-hand run in a sub-folder of the project
    adds no ``relative_to`` for it (taken as relative, the record would say that ~/photos starts
    from ``sub``); a relative path beside it still does."""
    (tmp_path / "proj" / "sub").mkdir(parents=True)
    (tmp_path / "proj" / "dvc.yaml").write_text("stages: {}\n")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("DVC_ROOT", raising=False)
    monkeypatch.chdir(tmp_path / "proj" / "sub")
    assert acquire.relative_base("~/photos") == {}
    assert acquire.relative_base("~/photos", None, "https://example.org/x") == {}
    assert acquire.relative_base("~/photos", "photos") == {"relative_to": "sub"}


def _am_folder(root: Path) -> Path:
    rng = np.random.default_rng(0)
    for sub in ("input", "gt"):
        (root / sub).mkdir(parents=True)
        (root / sub / "GT01.png").write_bytes(png_bytes(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)))
    return root


@pytest.mark.parametrize("case", ["folder outside", "loop", "self loop", "broken", "fifo"])
def test_download_alphamatting_from_dir_copies_no_link_out_of_the_folder_nor_a_pipe(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: str) -> None:
    """--from-dir copied input/ and gt/ following symbolic links: input/ext -> /elsewhere copied that
    folder into the data folder and its record (rc 0; input/home -> / would copy the file system),
    input/loop -> .. and a named pipe gave "internal error (a bug in bafusion, not in your input)".
    Each is refused before anything is written, naming the entry and what to do."""
    import os

    from bafusion.cli import main

    monkeypatch.setenv("BAFUSION_MLFLOW", "0")
    src, out = _am_folder(tmp_path / "am"), tmp_path / "out"
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "private.txt").write_text("not for the data folder")
    entry, wanted = {
        "folder outside": (src / "input" / "ext", f"symbolic link to the folder {tmp_path / 'elsewhere'}, outside "
                                                  f"{src}: a folder linked from outside is not copied"),
        "loop": (src / "input" / "loop", f"symbolic link to {src.resolve()}, a folder that holds it (a loop)"),
        "self loop": (src / "gt" / "self", "broken symbolic link, or a loop of links (to self)"),
        "broken": (src / "gt" / "gone.png", f"broken symbolic link, or a loop of links (to {tmp_path / 'gone.png'})"),
        "fifo": (src / "input" / "pipe", "a named pipe (FIFO), not a regular file"),
    }[case]
    if case == "fifo":
        os.mkfifo(entry)
    else:
        target = {"folder outside": tmp_path / "elsewhere",
                  "loop": Path(".."), "self loop": Path("self"), "broken": tmp_path / "gone.png"}[case]
        entry.symlink_to(target)
    rc = main(["download-alphamatting", "--from-dir", str(src), "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert err.splitlines() == [f"bafusion download-alphamatting: error: {entry}: {err.split(f'{entry}: ', 1)[1].strip()}"]
    assert wanted in err and "internal error" not in err, err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_download_alphamatting_from_dir_follows_linked_subfolders_and_files_linked_from_anywhere(tmp_path: Path) -> None:
    """input/ and gt/ linked to where the data lies, and their files linked into a store outside the
    folder (DVC's symlink cache, git-annex, ``cp -rs``), are copied as before (a first version of
    the link check refused every link leaving the folder)."""
    store = _am_folder(tmp_path / "store")
    src = tmp_path / "am"
    src.mkdir()
    (src / "input").symlink_to(store / "input")
    (src / "gt").mkdir()
    (src / "gt" / "GT01.png").symlink_to(store / "gt" / "GT01.png")
    rec = acquire_alphamatting(tmp_path / "out", from_dir=src)
    out = tmp_path / "out"
    for sub in ("input", "gt"):
        assert (out / sub / "GT01.png").read_bytes() == (store / sub / "GT01.png").read_bytes()
        assert not (out / sub / "GT01.png").is_symlink()
    assert {"input/GT01.png", "gt/GT01.png"} <= set(rec["written"])


def test_download_alphamatting_from_dir_follows_links_inside_the_folder(tmp_path: Path) -> None:
    """A link to a file or folder inside the --from-dir folder is copied as what it points to, as
    before; a file the copy cannot read is an error naming it, not an internal error."""
    import shutil

    src = _am_folder(tmp_path / "am")
    (src / "input" / "notes.txt").symlink_to(Path("..") / "gt" / "GT01.png")
    (src / "gt" / "sub").mkdir()
    (src / "gt" / "sub" / "inp").symlink_to(Path("..") / ".." / "input")
    rec = acquire_alphamatting(tmp_path / "out", from_dir=src)
    out = tmp_path / "out"
    assert (out / "input" / "notes.txt").read_bytes() == (src / "gt" / "GT01.png").read_bytes()
    assert not (out / "input" / "notes.txt").is_symlink()
    assert "gt/sub/inp/GT01.png" in rec["written"] and (out / "gt" / "sub" / "inp" / "notes.txt").is_file()

    def unreadable(a: Path, b: Path) -> None:
        raise shutil.Error([(str(a / "GT01.png"), str(b / "GT01.png"), "[Errno 13] Permission denied")])

    import bafusion.data.acquire as acq

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(acq.shutil, "copytree", unreadable)
        with pytest.raises(UserError, match=re.escape(f"{src / 'input' / 'GT01.png'}: cannot be copied ([Errno 13] "
                                                      "Permission denied)")):
            acquire_alphamatting(tmp_path / "out2", from_dir=src)
    assert not (tmp_path / "out2").exists()
