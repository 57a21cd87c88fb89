"""bafusion.data.coco: deterministic pycocotools selection with filters, and the sharpness ranking."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from bafusion.data.coco import (
    CocoFilter,
    annotation_member,
    image_url,
    is_colour,
    load_coco,
    measure,
    rank_by_sharpness,
    select_candidates,
    sharpness,
)
from bafusion.data.sources import _builtin_image
from bafusion.errors import InputFileError, UserError

CATEGORIES = [
    {"id": 1, "name": "person", "supercategory": "person"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 18, "name": "dog", "supercategory": "animal"},
]


def coco_dataset(n: int = 40, base_url: str = "http://images.cocodataset.org/", split: str = "train2017") -> dict[str, Any]:
    """A COCO-format instances dict: image i is 640x480 except every 5th (200x150); person on
    even ids, dog on ids divisible by 3, car on ids ending in 7."""
    images, anns = [], []
    for i in range(1, n + 1):
        w, h = (200, 150) if i % 5 == 0 else (640, 480)
        fn = f"{i:012d}.jpg"
        images.append({"id": i, "file_name": fn, "width": w, "height": h, "coco_url": f"{base_url}{split}/{fn}", "license": 1})
        cats = [1] * (i % 2 == 0) + [18] * (i % 3 == 0) + [3] * (i % 10 == 7)
        for c in cats:
            ann = {"id": len(anns) + 1, "image_id": i, "category_id": c, "bbox": [1, 1, 10, 10], "area": 100.0}
            anns.append({**ann, "iscrowd": 0, "segmentation": [[1, 1, 11, 1, 11, 11]]})
    return {"info": {}, "licenses": [], "images": images, "annotations": anns, "categories": CATEGORIES}


def captions_dataset(instances: dict[str, Any]) -> dict[str, Any]:
    caps = [{"id": k + 1, "image_id": im["id"], "caption": "a photo"} for k, im in enumerate(instances["images"])]
    return {"info": {}, "licenses": [], "images": instances["images"], "annotations": caps}


def write_annotations_zip(path: Path, instances: dict[str, Any], split: str = "train2017") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(annotation_member(split, True), json.dumps(instances))
        zf.writestr(annotation_member(split, False), json.dumps(captions_dataset(instances)))
    return path


@pytest.fixture
def coco_json(tmp_path: Path) -> Path:
    p = tmp_path / "instances_train2017.json"
    p.write_text(json.dumps(coco_dataset()))
    return p


def ids(records: list[dict[str, Any]]) -> list[int]:
    return [r["id"] for r in records]


def test_selection_is_deterministic_by_seed(coco_json: Path) -> None:
    flt = CocoFilter(min_side=0)
    coco = load_coco(coco_json, flt)
    a = ids(select_candidates(coco, flt, seed=7))
    b = ids(select_candidates(load_coco(coco_json, flt), flt, seed=7))
    c = ids(select_candidates(coco, flt, seed=8))
    assert a == b
    assert sorted(a) == list(range(1, 41))
    assert a != c and sorted(c) == sorted(a)
    assert ids(select_candidates(coco, flt, seed=7, limit=5)) == a[:5]


def test_filters_min_side_and_categories(coco_json: Path) -> None:
    flt = CocoFilter(min_side=256)
    got = set(ids(select_candidates(load_coco(coco_json, flt), flt, seed=0)))
    assert got == {i for i in range(1, 41) if i % 5}

    flt = CocoFilter(min_side=256, categories=("dog",))
    got = set(ids(select_candidates(load_coco(coco_json, flt), flt, seed=0)))
    assert got == {i for i in range(1, 41) if i % 5 and i % 3 == 0}

    flt = CocoFilter(min_side=0, categories=("dog", "car"), exclude=("person",))
    got = set(ids(select_candidates(load_coco(coco_json, flt), flt, seed=0)))
    assert got == {i for i in range(1, 41) if (i % 3 == 0 or i % 10 == 7) and i % 2}

    flt = CocoFilter(min_side=0, exclude=("person",))
    got = set(ids(select_candidates(load_coco(coco_json, flt), flt, seed=0)))
    assert got == {i for i in range(1, 41) if i % 2}

    flt = CocoFilter(categories=("unicorn",))
    with pytest.raises(UserError, match="unicorn"):
        select_candidates(load_coco(coco_json, flt), flt, seed=0)


def test_annotations_read_from_the_zip(tmp_path: Path) -> None:
    z = write_annotations_zip(tmp_path / "annotations_trainval2017.zip", coco_dataset())
    plain = load_coco(z, CocoFilter())  # no category filter: the (smaller) captions member
    assert len(plain.getImgIds()) == 40 and "categories" not in plain.dataset
    inst = load_coco(z, CocoFilter(categories=("dog",)))
    assert "categories" in inst.dataset
    with pytest.raises(InputFileError, match="val2017"):
        load_coco(z, CocoFilter(split="val2017"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(InputFileError, match="bad.json"):
        load_coco(bad, CocoFilter())
    caps = tmp_path / "captions.json"
    caps.write_text(json.dumps(captions_dataset(coco_dataset())))
    with pytest.raises(InputFileError, match="instance annotations"):
        load_coco(caps, CocoFilter(categories=("dog",)))


def test_image_url_and_mirror() -> None:
    rec = coco_dataset(1)["images"][0]
    assert image_url(rec, "train2017") == "http://images.cocodataset.org/train2017/000000000001.jpg"
    assert image_url(rec, "train2017", "http://mirror.local/coco/") == "http://mirror.local/coco/train2017/000000000001.jpg"


def blur(img: np.ndarray, sigma: float) -> np.ndarray:
    out = np.stack([ndimage.gaussian_filter(img[..., c].astype(np.float64), sigma) for c in range(3)], axis=-1)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


COLOUR_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "motorcycle", "immunohistochemistry")


def test_sharpness_ranking_keeps_sharp_over_blurred(tmp_path: Path) -> None:
    items = []
    for name in COLOUR_PHOTOS:
        img = _builtin_image(name)[:200, :260]
        for tag, arr in (("sharp", img), ("blur", blur(img, 1.5))):
            p = tmp_path / f"{name}-{tag}.jpg"
            Image.fromarray(arr).save(p, quality=95)
            items.append(measure(p))
    for name in COLOUR_PHOTOS:  # each photo beats its own blurred copy by far
        s = {it.id: it.sharpness for it in items}
        assert s[f"{name}-sharp"] > 5 * s[f"{name}-blur"]
    kept, dropped = rank_by_sharpness(items, keep=len(COLOUR_PHOTOS))
    assert sorted(k.id for k in kept) == sorted(f"{n}-sharp" for n in COLOUR_PHOTOS)
    assert [k.sharpness for k in kept] == sorted((k.sharpness for k in kept), reverse=True)
    assert all(reason == "less sharp than the kept images" for _, reason in dropped) and len(dropped) == 6


def test_gray_photos_are_dropped_when_colour_only(tmp_path: Path) -> None:
    rgb = _builtin_image("astronaut")[:128, :128]
    gray = np.repeat(rgb.mean(axis=2, keepdims=True).astype(np.uint8), 3, axis=2)
    assert is_colour(rgb) and not is_colour(gray)
    Image.fromarray(rgb).save(tmp_path / "c.png")
    Image.fromarray(gray[..., 0]).save(tmp_path / "g-mode-L.png")
    Image.fromarray(gray).save(tmp_path / "g-rgb.png")
    items = [measure(tmp_path / n) for n in ("c.png", "g-mode-L.png", "g-rgb.png")]
    kept, dropped = rank_by_sharpness(items, keep=3, colour_only=True)
    assert [k.id for k in kept] == ["c"] and {d.id: r for d, r in dropped} == {"g-mode-L": "gray", "g-rgb": "gray"}
    kept, _ = rank_by_sharpness(items, keep=3, colour_only=False)
    assert len(kept) == 3


def test_sharpness_is_comparable_across_sizes() -> None:
    img = _builtin_image("coffee")  # 341x512
    big = np.asarray(Image.fromarray(img).resize((1024, 682), Image.Resampling.LANCZOS))
    # measured at the same analysis size, a 2x upscaled copy scores like the original,
    # not 4x+ lower as it would at native resolution
    assert 0.5 < sharpness(big) / sharpness(img) < 2.0
