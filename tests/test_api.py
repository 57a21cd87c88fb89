"""The public Python API (README "Python API"): ``from bafusion import fuse, load_model,
metrics, ...``, loaded lazily, and the same results as the functions it wraps."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bafusion
from bafusion.errors import UserError
from bafusion.fusion import FusionParams, fuse_images, fuse_stack, load_nets_from_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _pair(tmp_path: Path) -> tuple[np.ndarray, np.ndarray, Path, Path]:
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)
    pa, pb = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(a).save(pa)
    Image.fromarray(b).save(pb)
    return a, b, pa, pb


def test_every_public_name_resolves() -> None:
    for name in bafusion.__all__:
        assert getattr(bafusion, name) is not None, name
        assert name in dir(bafusion)
    assert bafusion.metrics.__name__ == "bafusion.evaluation.metrics"
    assert bafusion.fuse.__doc__ and "Parameters" in bafusion.fuse.__doc__  # numpydoc
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        bafusion.nope  # noqa: B018


def test_dir_shows_only_the_public_api() -> None:
    """dir(bafusion) listed implementation names beside the API (Any, annotations, importlib,
    _API, _version), and bafusion.Any worked: it lists __all__ (and the module's dunders) only,
    and those names are gone; a subpackage stays reachable by import."""
    import bafusion.fusion  # noqa: F401 - a loaded subpackage is an attribute, not listed

    names = dir(bafusion)
    assert set(bafusion.__all__) <= set(names)
    extra = [n for n in names if n not in bafusion.__all__ and not (n.startswith("__") and n.endswith("__"))]
    assert extra == [], extra
    for name in ("Any", "annotations", "importlib"):
        assert not hasattr(bafusion, name), name
    assert bafusion.fusion.__name__ == "bafusion.fusion"


def test_import_bafusion_loads_nothing_heavy() -> None:
    code = "import sys, bafusion; print(sorted(m for m in ('torch', 'numpy', 'bafusion.fusion') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_bafusion_metrics_imports_as_a_module() -> None:
    """``import bafusion.metrics`` and ``from bafusion.metrics import qg`` failed with
    ModuleNotFoundError, though the package's docstring presents bafusion.metrics as a module
    (``from bafusion import metrics`` worked). Each form gives bafusion.evaluation.metrics
    itself, in a fresh interpreter, whichever comes first."""
    check = ("import bafusion.evaluation.metrics as em\n"
             "assert bafusion.metrics is em and sys.modules['bafusion.metrics'] is em, bafusion.metrics\n"
             "assert qg is em.qg\n")
    for first in ("import sys, bafusion.metrics\nfrom bafusion.metrics import qg\n",
                  "import sys\nfrom bafusion.metrics import qg\nimport bafusion.metrics\n",
                  "import sys\nfrom bafusion import metrics\nimport bafusion.metrics\nfrom bafusion.metrics import qg\n"):
        subprocess.run([sys.executable, "-c", first + check], capture_output=True, text=True, check=True)


def test_fuse_equals_the_rule_on_arrays_and_on_paths(tmp_path: Path, tiny_nets: Path) -> None:
    a, b, pa, pb = _pair(tmp_path)
    nets = bafusion.load_model(tiny_nets, device="cpu")
    params = FusionParams(min_region=0.0)
    want = fuse_images(a, b, nets, params).fused
    assert np.array_equal(bafusion.fuse(a, b, model=nets, params=params), want)
    assert np.array_equal(bafusion.fuse(pa, pb, model=str(tiny_nets), device="cpu", params=params), want)
    assert np.array_equal(bafusion.fuse(pa, b, model=nets, params=params), want)  # a path and an array


def test_fuse_a_stack_follows_the_stack_rule(tmp_path: Path, tiny_nets: Path) -> None:
    a, b, _, _ = _pair(tmp_path)
    c = np.ascontiguousarray(a[::-1])
    nets = load_nets_from_dir(tiny_nets, "cpu")
    chain = bafusion.fuse(a, b, c, model=nets)
    assert np.array_equal(chain, fuse_stack([a, b, c], nets)[-1].fused)
    joint = bafusion.fuse(a, b, c, model=nets, params=FusionParams(stack_rule="joint"))
    assert joint.shape == a.shape and joint.dtype == np.uint8


def test_fuse_progress_of_a_joint_stack_says_its_steps(tmp_path: Path, tiny_nets: Path, capsys) -> None:
    """fuse(a, b, c, params={"stack_rule": "joint"}, progress=True) said nothing: the joint rule
    draws no bar and was called without a way to report. It says each step on stderr, as the
    command line does; progress=False stays silent, and the fusion is the same."""
    a, b, pa, pb = _pair(tmp_path)
    c = np.ascontiguousarray(a[::-1])
    nets = load_nets_from_dir(tiny_nets, "cpu")
    joint = {"stack_rule": "joint"}
    quiet = bafusion.fuse(a, b, c, model=nets, params=joint, progress=False)
    assert capsys.readouterr().err == ""
    loud = bafusion.fuse(pa, pb, c, model=nets, params=joint, progress=True)
    err = capsys.readouterr().err
    assert "step 1/2: scoring a.png against the 2 shots after it (pair scorings 1-2 of 3) ...\n" in err, err
    assert "step 2/2: scoring b.png against the shot after it (pair scoring 3 of 3) ...\n" in err, err
    assert np.array_equal(quiet, loud)


def test_fuse_refuses_before_work(tmp_path: Path) -> None:
    a, b, _, _ = _pair(tmp_path)
    with pytest.raises(UserError, match="at least two"):
        bafusion.fuse(a)
    with pytest.raises(UserError, match="size"):
        bafusion.fuse(a, b[:20])
    with pytest.raises(UserError, match="align must be None or one of"):
        bafusion.fuse(a, b, align="affine")
    with pytest.raises(UserError, match="missing.png"):
        bafusion.fuse(a, tmp_path / "missing.png")
    with pytest.raises(UserError, match=r"separate arguments: fuse\(a, b\) or fuse\(\*shots\)"):
        bafusion.fuse([a, b])
    empty = np.zeros((0, 0), np.uint8)
    with pytest.raises(UserError, match=r"source 1: .* shape \(0, 0\) \(empty\)"):
        bafusion.fuse(empty, empty)
    with pytest.raises(UserError, match=r"source 2: .* shape \(4,\)"):
        bafusion.fuse(np.zeros((4, 4), np.uint8), np.zeros(4, np.uint8))


def _deep(a8: np.ndarray, seed: int) -> np.ndarray:
    """A uint16 version of ``a8`` with low bits of its own that round back to ``a8``."""
    jitter = np.random.default_rng(seed).integers(-120, 121, a8.shape)
    return np.clip(a8.astype(np.int64) * 257 + jitter, 0, 65535).astype(np.uint16)


def _focus_pair() -> tuple[np.ndarray, np.ndarray]:
    """A colour texture sharp on the left in A and on the right in B."""
    from scipy import ndimage

    rng = np.random.default_rng(5)
    scene = ndimage.gaussian_filter(rng.uniform(0, 255, (72, 80, 3)), (0.8, 0.8, 0))
    blur = ndimage.gaussian_filter(scene, (3, 3, 0))
    left = (np.arange(80) < 40)[None, :, None]
    a, b = np.where(left, scene, blur), np.where(left, blur, scene)
    return np.round(a).astype(np.uint8), np.round(b).astype(np.uint8)


def test_fuse_keeps_16_bits(tmp_path: Path) -> None:
    a8, b8 = _focus_pair()
    a16, b16 = _deep(a8, 1), _deep(b8, 2)
    nets = bafusion.load_model("default", device="cpu")
    params = FusionParams(min_region=0.0, working_min=0)
    res8 = fuse_images(a8, b8, nets, params)
    assert 0.05 < res8.decision.mean() < 0.95  # both sources contribute: the check below can fail
    f16 = bafusion.fuse(a16, b16, model=nets, params=params)
    assert f16.dtype == np.uint16 and f16.shape == a16.shape
    # each pixel is A's or B's full-depth pixel, as the decision made on 8 bits says
    assert np.array_equal(f16, np.where(res8.decision[..., None], a16, b16))
    assert np.array_equal(bafusion.fuse(a16, b16, model=nets, params=params, keep_depth=False), res8.fused)
    # a uint8 source beside a uint16 one: at one depth (x 257), not mixed (test_a_uint16_array_beside_...)
    mixed = bafusion.fuse(a16, b8.astype(np.uint16) * 257, model=nets, params=params)
    assert np.array_equal(mixed, np.where(res8.decision[..., None], a16, b8.astype(np.uint16) * 257))
    # 16-bit files are read at their full depth
    pa, pb = tmp_path / "a16.png", tmp_path / "b16.png"
    bafusion.write_image(pa, a16)
    bafusion.write_image(pb, b16)
    assert np.array_equal(bafusion.fuse(pa, pb, model=nets, params=params), f16)
    # three shots, both stack rules
    for rule in ("chain", "joint"):
        p3 = FusionParams(min_region=0.0, working_min=0, stack_rule=rule)
        f3 = bafusion.fuse(a16, b16, a16, model=nets, params=p3)
        f3_8 = bafusion.fuse(a8, b8, a8, model=nets, params=p3)
        assert f3.dtype == np.uint16
        assert np.array_equal(scale16(f3), f3_8), rule
        assert np.all((f3 == a16) | (f3 == b16)), rule


@pytest.mark.filterwarnings("ignore::bafusion.fusion.rule.FusionNoteWarning")  # the dark shot's note: not tested here
def test_a_uint16_array_beside_an_8_bit_source_is_refused(tmp_path: Path) -> None:
    """A uint16 array beside a uint8 array (or an 8-bit file) was scaled for the decision by a
    depth guessed from its largest value: a dark 16-bit shot (maximum 4000) was taken for 12-bit
    data, 16 times too bright beside the 8-bit shot, where an unmarked 16-bit file beside an
    8-bit one is read on its full 16-bit scale and ``bafusion.metrics`` refuses a uint16 F beside
    8-bit sources. It is refused, naming the sources and how to give them at one depth; uint16
    arrays alone, uint8 ones alone and a uint8 array beside a 16-bit file are fused as before."""
    a8, b8 = _focus_pair()
    dark16 = (b8.astype(np.uint16) * 257 // 17).astype(np.uint16)  # a dark 16-bit shot: largest value 3855
    assert dark16.max() < 4096
    nets = bafusion.load_model("default", device="cpu")
    params = FusionParams(min_region=0.0, working_min=0)
    with pytest.raises(UserError, match=r"^source 2 is a uint16 array but source 1 is 8-bit: the bit depth of "
                                        r"uint16 data beside 8-bit shots cannot be told .*x.astype\(np.uint16\) \* 257"):
        bafusion.fuse(a8, dark16, model=nets, params=params)
    p8 = tmp_path / "a8.png"
    bafusion.write_image(p8, a8)
    with pytest.raises(UserError, match=rf"^source 2 and source 3 are uint16 arrays but {re.escape(str(p8))} is 8-bit"):
        bafusion.fuse(p8, dark16, dark16, model=nets, params=params)
    # one depth: fused
    assert bafusion.fuse(a8.astype(np.uint16) * 257, dark16, model=nets, params=params).dtype == np.uint16
    assert bafusion.fuse(a8, b8, model=nets, params=params).dtype == np.uint8
    p16 = tmp_path / "b16.png"
    bafusion.write_image(p16, dark16)
    assert bafusion.fuse(a8, p16, model=nets, params=params).dtype == np.uint16  # a file carries its depth (sBIT)


def test_12_bit_data_in_uint16_arrays_is_decided_as_12_bit_and_keeps_its_values(tmp_path: Path) -> None:
    """As an unmarked 16-bit file is read: the decision on 12-bit data in uint16 was made on
    an image 16x too dark (scaled as 16-bit); the result keeps the arrays' own values."""
    from bafusion.io import scale_to_u8

    a8, b8 = _focus_pair()
    a12, b12 = _deep(a8, 1) >> 4, _deep(b8, 2) >> 4  # values up to 4095
    nets = bafusion.load_model("default", device="cpu")
    params = FusionParams(min_region=0.0, working_min=0)
    res = fuse_images(scale_to_u8(a12, 12), scale_to_u8(b12, 12), nets, params)
    assert 0.05 < res.decision.mean() < 0.95
    f12 = bafusion.fuse(a12, b12, model=nets, params=params)
    assert f12.dtype == np.uint16 and f12.max() <= 4095
    assert np.array_equal(f12, np.where(res.decision[..., None], a12, b12))
    assert np.array_equal(bafusion.fuse(a12, b12, model=nets, params=params, keep_depth=False), res.fused)
    # a uint8 array or an 8-bit file beside them is refused (a depth guessed from their largest
    # value: test_a_uint16_array_beside_an_8_bit_source_is_refused)
    p8 = tmp_path / "b8.png"
    bafusion.write_image(p8, scale_to_u8(b12, 12))
    for b in (scale_to_u8(b12, 12), p8):
        with pytest.raises(UserError, match="cannot be told"):
            bafusion.fuse(a12, b, model=nets, params=params)
    # the same data as a 16-bit PNG file: the same decision (the file rule), on the 16-bit scale
    pa = tmp_path / "a12.png"
    bafusion.write_image(pa, a12)
    from_file = bafusion.fuse(pa, b12, model=nets, params=params)
    want = np.where(res.decision[..., None], np.round(a12 / 4095 * 65535), np.round(b12 / 4095 * 65535))
    assert np.array_equal(from_file, want.astype(np.uint16))


def scale16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x / 65535 * 255), 0, 255).astype(np.uint8)


def test_fuse_refuses_other_array_types(tmp_path: Path, tiny_nets: Path) -> None:
    a, b, _, _ = _pair(tmp_path)
    with pytest.raises(UserError, match="source 2: sources must be uint8 or uint16 arrays, got float32"):
        bafusion.fuse(a, b.astype(np.float32), model=str(tiny_nets), device="cpu")


def test_fuse_takes_what_a_file_would_give_and_names_what_it_cannot(tmp_path: Path, tiny_nets: Path) -> None:
    """(H, W, 1) is gray, the alpha of (H, W, 2) and (H, W, 4) is dropped (as from a file); a
    mapping of parameters is checked like params.yaml's; a PIL image or a (H, W, 5) array is a
    UserError naming the source (were: (H, W, 1) out, TypeError, AttributeError, ValueError)."""
    a, b, _, _ = _pair(tmp_path)
    ga, gb = a[..., 0], b[..., 0]
    kw = {"model": str(tiny_nets), "device": "cpu"}
    gray = bafusion.fuse(ga, gb, **kw)
    assert np.array_equal(bafusion.fuse(ga[..., None], gb[..., None], **kw), gray) and gray.ndim == 2
    alpha = np.full(ga.shape + (1,), 7, np.uint8)
    assert np.array_equal(bafusion.fuse(np.concatenate([ga[..., None], alpha], 2), gb, **kw), gray)
    rgb = bafusion.fuse(a, b, **kw)
    assert np.array_equal(bafusion.fuse(np.concatenate([a, alpha], 2), b, **kw), rgb)
    assert np.array_equal(bafusion.fuse(a, b, params={"l": 3}, **kw), bafusion.fuse(a, b, params=FusionParams(l=3), **kw))
    with pytest.raises(UserError, match=r"params: .*\bbogus\b"):
        bafusion.fuse(a, b, params={"bogus": 1}, **kw)
    with pytest.raises(UserError, match="params must be a FusionParams or a mapping of its fields, got int"):
        bafusion.fuse(a, b, params=4, **kw)
    with pytest.raises(UserError, match=r"source 2: expected a file path or a numpy array, got .*numpy\.asarray"):
        bafusion.fuse(a, Image.fromarray(b), **kw)
    with pytest.raises(UserError, match=r"source 1: expected an \(H, W\) gray or \(H, W, 3\) colour image, got an array "
                                        r"of shape \(40, 36, 5\)"):
        bafusion.fuse(np.zeros((40, 36, 5), np.uint8), b, **kw)


def test_fuse_size_error_says_an_exif_orientation_was_applied(tmp_path: Path) -> None:
    """As ``bafusion fuse`` and ``metrics`` do: a file whose EXIF orientation swapped its width
    and height is named with what it stores (the error said only "size 24x20 differs from 20x24")."""
    rng = np.random.default_rng(1)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(tmp_path / "r.jpg", exif=exif.tobytes())
    s = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    Image.fromarray(s).save(tmp_path / "s.png")
    want = f"{tmp_path / 'r.jpg'}'s EXIF orientation 6 was applied (the file stores 24x20)"
    for other in (tmp_path / "s.png", s):
        with pytest.raises(UserError, match=r"size 24x20 \(WxH\) differs from 20x24 of .*r\.jpg") as e:
            bafusion.fuse(tmp_path / "r.jpg", other)
        assert want in str(e.value)
        with pytest.raises(UserError) as e:  # the turned file second
            bafusion.fuse(other, tmp_path / "r.jpg")
        assert want in str(e.value) and "r.jpg: size 20x24 (WxH) differs from 24x20" in str(e.value)


def test_a_bad_device_is_named_as_the_parameter_not_the_cli_option(tmp_path: Path, tiny_nets: Path) -> None:
    """fuse(device=...) and load_model(device=...) said "--device cuda:99: ...", an option the
    caller never gave; the error names the parameter, before any work."""
    a, b, _, _ = _pair(tmp_path)
    for device, why in (("gpu0", "not a device"), ("cuda:99", "CUDA")):
        with pytest.raises(UserError, match=rf"^device={device!r}: .*{why}") as e:
            bafusion.load_model(tiny_nets, device=device)
        assert "--device" not in str(e.value)
        with pytest.raises(UserError, match=rf"^device={device!r}: .*{why}"):
            bafusion.fuse(a, b, model=str(tiny_nets), device=device)


def test_device_none_is_refused_before_the_shots_are_read(tmp_path: Path, tiny_nets: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """device is a name (annotated str): device=None passed the check (None is the command
    line's unset option), load_model returned nets with device None and fuse read the shots,
    then failed in the fusion with "AttributeError: 'NoneType' object has no attribute 'type'"."""
    import bafusion.fusion.api as api
    from bafusion.fusion import load_nets, resolve_device

    a, b, _, _ = _pair(tmp_path)
    for device in (None, 0):
        want = rf"^device={device!r}: not a device"
        with pytest.raises(UserError, match=want):
            bafusion.load_model(tiny_nets, device=device)
        with pytest.raises(UserError, match=want):
            load_nets(tiny_nets / "initial.pt", tiny_nets / "boundary.pt", device=device)
        with pytest.raises(UserError, match=want):
            resolve_device(device)
        monkeypatch.setattr(api, "_read_sources", lambda *_: pytest.fail("read the shots before refusing"))
        with pytest.raises(UserError, match=want):
            bafusion.fuse(a, b, model=str(tiny_nets), device=device)
        monkeypatch.undo()


def test_a_model_that_is_no_folder_name_or_nets_is_named(tmp_path: Path, tiny_nets: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """load_model(5), fuse(a, b, model=5) and load_nets_from_dir(5) failed with pathlib's "TypeError:
    expected str, bytes or os.PathLike object, not int" (fuse after reading the shots), naming
    no parameter, as every other wrong-typed argument of fuse is named."""
    import bafusion.fusion.api as api
    from bafusion.errors import InputTypeError

    a, b, _, _ = _pair(tmp_path)
    with pytest.raises(InputTypeError, match=r"^model: expected a model folder, a shipped model's name \(a str or "
                                             r"path\), got int$"):
        bafusion.load_model(5)  # type: ignore[arg-type]
    with pytest.raises(InputTypeError, match=r"^model: expected .*\(a str or path\), got int$"):
        load_nets_from_dir(5)  # type: ignore[arg-type]
    nets = bafusion.load_model(tiny_nets, device="cpu")
    with pytest.raises(InputTypeError, match=r"got FusionNets; loaded nets already: pass them to fuse as model="):
        bafusion.load_model(nets)  # type: ignore[arg-type]
    monkeypatch.setattr(api, "_read_sources", lambda *_: pytest.fail("read the shots before refusing"))
    with pytest.raises(InputTypeError, match=r"^model: expected a model folder, a shipped model's name or loaded "
                                             r"nets \(bafusion\.load_model\(\.\.\.\)\), got int$"):
        bafusion.fuse(a, b, model=5)  # type: ignore[arg-type]


def test_a_torch_device_is_taken_as_before(tmp_path: Path, tiny_nets: Path) -> None:
    """Refusing device=None (a non-str) refused a torch.device too: load_model(device=
    torch.device("cpu")), fuse(..., device=torch.device("cpu")) and resolve_device(torch.device(
    "cpu")) said "device=device(type='cpu'): not a device" (they took one before; load_nets
    documents it). A torch.device is checked as its name: one this machine lacks is refused."""
    import torch

    from bafusion.fusion import load_nets, resolve_device

    a, b, _, _ = _pair(tmp_path)
    cpu = torch.device("cpu")
    assert resolve_device(cpu) == cpu
    assert bafusion.load_model(tiny_nets, device=cpu).device == cpu
    assert load_nets(tiny_nets / "initial.pt", tiny_nets / "boundary.pt", device=cpu).device == cpu
    want = bafusion.fuse(a, b, model=str(tiny_nets), device="cpu", align="none")
    assert np.array_equal(bafusion.fuse(a, b, model=str(tiny_nets), device=cpu, align="none"), want)
    absent = torch.device("cuda", torch.cuda.device_count()) if torch.cuda.is_available() else torch.device("cuda")
    for call in (lambda: resolve_device(absent), lambda: bafusion.load_model(tiny_nets, device=absent),
                 lambda: bafusion.fuse(a, b, model=str(tiny_nets), device=absent)):
        with pytest.raises(UserError, match=r"^device=device\(type='cuda'.*: (CUDA is not available|this machine has)"):
            call()


def test_fusion_nets_refuse_a_net_that_is_no_cifar_resnet() -> None:
    """FusionNets took any module (one's own scorer) or a callable, and the first fusion failed
    deep in the dense pass ("AttributeError: 'Mine' object has no attribute 'trunk'"; a function:
    "... no attribute 'to'"). Refused when built, naming the net and what it must be."""
    import torch

    from bafusion.errors import InputTypeError
    from bafusion.fusion import FusionNets
    from bafusion.nets.model import build_model

    class Mine(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.mean(dim=(2, 3))

    good = build_model(8)
    for initial, boundary, role, kind in ((Mine(), good, "initial", "Mine"), (good, lambda x: x, "boundary", "function")):
        with pytest.raises(InputTypeError, match=rf"^FusionNets {role}: expected a bafusion\.nets\.model\.CifarResNet "
                                                 rf"\(the fusion's dense pass runs its trunk and fc\), got \S*{kind}: "):
            FusionNets(initial, boundary, 8, 8, "cpu")
    assert FusionNets(good, good, 8, 8, "cpu").patch_initial == 8


def test_fusion_nets_take_a_data_parallel_net_for_the_net_it_wraps() -> None:
    """A CifarResNet wrapped by torch.nn.DataParallel (one's own training loop on several GPUs)
    was refused for its wrapper (and before that failed the first fusion: "'DataParallel' object
    has no attribute 'trunk'"); it is taken for the net it wraps and fuses as that net does."""
    import numpy as np
    import torch

    from bafusion.fusion import FusionNets, fuse_images
    from bafusion.nets.model import build_model

    torch.manual_seed(5)
    initial, boundary = build_model(8), build_model(8)
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 256, (24, 28, 3), dtype=np.uint8), rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)
    want = fuse_images(a, b, FusionNets(initial, boundary, 8, 8, "cpu")).fused
    wrapped = FusionNets(torch.nn.DataParallel(initial), torch.nn.DataParallel(boundary), 8, 8, "cpu")
    assert not isinstance(wrapped.initial, torch.nn.DataParallel) and "ResNet-8" in repr(wrapped)
    assert np.array_equal(fuse_images(a, b, wrapped).fused, want)


def test_fusion_nets_take_a_compiled_net_for_the_net_it_wraps() -> None:
    """A CifarResNet wrapped by torch.compile (an OptimizedModule, its net in ``_orig_mod``) was
    kept as it was: not folded, not copied (the caller's net was set to eval mode in place), and
    the dense pass, reading its trunk and fc, ran it uncompiled anyway. It is taken for the net
    it wraps (also inside DataParallel), folded, and fuses as that net does."""
    import numpy as np
    import torch

    from bafusion.fusion import FusionNets, fuse_images
    from bafusion.nets.model import CifarResNet, build_model

    torch.manual_seed(6)
    initial, boundary = build_model(8), build_model(8)
    try:
        compiled_i, compiled_b = torch.compile(initial), torch.compile(boundary)
    except Exception as e:  # pragma: no cover - a torch without a working torch.compile here
        pytest.skip(f"torch.compile unavailable: {e}")
    assert compiled_i._orig_mod is initial  # compiling is lazy: nothing compiled until called
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, 256, (24, 28, 3), dtype=np.uint8), rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)
    want = fuse_images(a, b, FusionNets(initial, boundary, 8, 8, "cpu")).fused
    nets = FusionNets(compiled_i, torch.nn.DataParallel(compiled_b), 8, 8, "cpu")
    for got in (nets.initial, nets.boundary):
        assert type(got) is CifarResNet and not hasattr(got, "_orig_mod")
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in got.modules())  # folded
    assert compiled_i.training and initial.training and compiled_b.training  # the caller's nets untouched
    assert "ResNet-8" in repr(nets) and np.array_equal(fuse_images(a, b, nets).fused, want)


def test_fusion_nets_built_with_a_device_name_fuse(tmp_path: Path) -> None:
    """FusionNets "built directly" (its docstring) with device="cpu", as load_model takes it,
    printed device=cpu but every fusion failed with "AttributeError: 'str' object has no
    attribute 'type'" ("auto": torch's RuntimeError naming no parameter). A name is resolved as
    load_model resolves it; one that is no device is refused as there."""
    import torch

    from bafusion.fusion import FusionNets, resolve_device
    from bafusion.nets.model import build_model

    a, b, _, _ = _pair(tmp_path)
    torch.manual_seed(0)
    initial, boundary = build_model(8), build_model(8)
    want = fuse_images(a, b, FusionNets(initial, boundary, 8, 8, torch.device("cpu"))).fused
    nets = FusionNets(initial, boundary, 8, 8, "cpu")
    assert nets.device == torch.device("cpu")
    assert np.array_equal(fuse_images(a, b, nets).fused, want)
    assert np.array_equal(bafusion.fuse(a, b, model=nets, align="none"), want)
    nets = FusionNets(initial, boundary, 8, 8, "auto")  # CUDA where there is one: same shape, not same bytes
    assert nets.device == resolve_device("auto")
    assert fuse_images(a, b, nets).fused.shape == want.shape
    for device in ("gpu", None):
        with pytest.raises(UserError, match=rf"^device={device!r}: not a device"):
            FusionNets(initial, boundary, 8, 8, device)


def test_the_model_loaders_of_bafusion_fusion_name_python_arguments_not_cli_options(tiny_nets: Path) -> None:
    """load_nets, load_nets_from_dir and resolve_device, called from Python, said "swap the
    --initial and --boundary files", "--device gpu: not a device" and "or pass --model DIR":
    options of the command line. They name the Python arguments (the command line's wording
    is kept: tests/test_cli_errors.py)."""
    import json

    from bafusion.fusion import load_nets, resolve_device

    for role in ("initial", "boundary"):
        jp = tiny_nets / f"{role}.json"
        jp.write_text(json.dumps({**json.loads(jp.read_text()), "net": role}))
    calls = [
        (lambda: load_nets(tiny_nets / "boundary.pt", tiny_nets / "initial.pt", "cpu"),
         "given as the initial net: swap the initial and boundary arguments"),
        (lambda: load_nets(tiny_nets / "initial.pt", tiny_nets / "boundary.pt", device="gpu"),
         "device='gpu': not a device"),
        (lambda: resolve_device("gpu"), "device='gpu': not a device"),
        (lambda: load_nets(tiny_nets / "nope.pt", tiny_nets / "boundary.pt", "cpu"),
         "nope.pt: model file not found (train them with"),
        (lambda: load_nets_from_dir(tiny_nets.parent / "nomodels", "cpu"), "pass model=DIR"),
    ]
    for call, said in calls:
        with pytest.raises(UserError) as e:
            call()
        assert said in str(e.value) and not any(f"--{o}" in str(e.value) for o in ("model", "device", "initial")), e.value
    for ext in ("pt", "json"):  # a folder whose two nets are swapped
        (tiny_nets / f"initial.{ext}").rename(tiny_nets / f"x.{ext}")
        (tiny_nets / f"boundary.{ext}").rename(tiny_nets / f"initial.{ext}")
        (tiny_nets / f"x.{ext}").rename(tiny_nets / f"boundary.{ext}")
    with pytest.raises(UserError, match=r"initial net: the folder's initial\.pt and boundary\.pt are swapped"):
        load_nets_from_dir(tiny_nets, "cpu")


def test_a_net_file_given_as_the_model_folder_is_named_a_file(tiny_nets: Path) -> None:
    """load_model(<a file>) said "model folder not found": the path exists, it is a file."""
    for model in (tiny_nets / "initial.pt", str(tiny_nets / "boundary.pt")):
        with pytest.raises(UserError, match=r"initial\.pt|boundary\.pt") as e:
            bafusion.load_model(model, device="cpu")
        assert str(e.value).endswith(": is a file, not a model folder: pass the folder that holds initial.pt "
                                     "and boundary.pt"), e.value
        assert "not found" not in str(e.value)


def test_a_missing_model_folder_names_the_model_parameter(tmp_path: Path) -> None:
    """load_model and fuse said "pass --model DIR", an option of the command line, not of Python."""
    for call in (lambda: bafusion.load_model(tmp_path / "nomodels", device="cpu"),
                 lambda: bafusion.fuse(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8),
                                       model=str(tmp_path / "nomodels"),
                                       device="cpu")):
        with pytest.raises(UserError, match="nomodels: model folder not found") as e:
            call()
        assert "pass model=DIR" in str(e.value) and "--model" not in str(e.value), e.value


def test_a_shipped_models_repository_path_elsewhere_points_at_its_name(tmp_path: Path, monkeypatch) -> None:
    """load_model("models/default") outside the repository root said only how to train nets;
    it now says model='default' uses the shipped model (and does not take the path for it)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError, match=r"^models/default: model folder not found") as e:
        bafusion.load_model("models/default", device="cpu")
    assert "'default' is a shipped model: pass model='default' to use it" in str(e.value), e.value
    assert "--model" not in str(e.value)


def _scene(seed: int, h: int = 128, w: int = 160) -> np.ndarray:
    """A textured gray scene: smoothed noise at two scales, uint8."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    x = ndimage.gaussian_filter(rng.normal(size=(h, w)), 2) * 4 + ndimage.gaussian_filter(rng.normal(size=(h, w)), 8) * 12
    return np.clip(128 + 40 * x / x.std(), 0, 255).astype(np.uint8)


def _line_pair(h: int = 128, w: int = 160) -> tuple[np.ndarray, np.ndarray]:
    """One bright line on gray and its blur: registered, but the estimate reads a scale of 0.61."""
    from scipy import ndimage

    a = np.full((h, w), 128, np.uint8)
    a[h // 2, :] = 255
    return a, ndimage.gaussian_filter(a.astype(np.float64), 2).round().astype(np.uint8)


def test_fuse_with_align_refuses_what_fuse_align_refuses(tiny_nets: Path) -> None:
    """``fuse(..., align="similarity")`` fused an implausible estimate (scale 0.61) and two
    scenes (match quality below MIN_QUALITY) where ``fuse --align similarity`` refuses both
    (bafusion.fusion.align.check_alignment); the message names the API's way out."""
    nets = load_nets_from_dir(tiny_nets, "cpu")
    a, b = _line_pair()
    with pytest.raises(UserError, match=r'source 2: the similarity alignment to source 1 failed: .*scale 0\.61.*'
                                        r'use align="none" to fuse the shots as registered$'):
        bafusion.fuse(a, b, model=nets, align="similarity")
    with pytest.raises(UserError, match=r'source 2: does not look like the same scene as source 1 \(match quality '
                                        r'.* after translation alignment, below 0\.5\); use align="none"'):
        bafusion.fuse(_scene(1), _scene(2), model=nets, align="translation")


def test_fuse_align_auto_behaves_as_the_command_line(tiny_nets: Path) -> None:
    """``align="auto"`` took an implausible coarse estimate silently for no motion and fused two
    scenes; as ``fuse --align auto``, it now warns of the failed estimate (fused as registered)
    and refuses two scenes."""
    nets = load_nets_from_dir(tiny_nets, "cpu")
    a, b = _line_pair()
    with pytest.warns(UserWarning, match=r'align="auto": source 2: the motion estimate .* is not one a hand-held '
                                         r"focus pair shows, taken for a failure: fused as registered"):
        fused = bafusion.fuse(a, b, model=nets, align="auto")
    assert np.array_equal(fused, bafusion.fuse(a, b, model=nets, align="none"))
    # refused after trying the alignment too (a shot moved a lot matches after it): both numbers
    with pytest.raises(UserError, match=r'source 2: does not look like the same scene as source 1 \(correlation .*; '
                                        r'match quality .* after similarity alignment, below 0.5\); use align="none"'):
        bafusion.fuse(_scene(1), _scene(2), model=nets, align="auto")


def test_fuse_align_auto_says_when_it_falls_back_to_the_shots_as_registered(tiny_nets: Path) -> None:
    """``align="auto"`` left a shot it could not judge (too flat, or a thin strip too small)
    unaligned in silence, where ``fuse --align auto`` says "fused as registered" on stderr; and
    its warning of a failed estimate was a plain UserWarning. Every fall-back is now an
    :class:`bafusion.fusion.scene.AutoAlignWarning` (a UserWarning) whose text is the command
    line's line, and the shots are fused as registered."""
    import warnings

    from bafusion.fusion.scene import AutoAlignWarning

    nets = load_nets_from_dir(tiny_nets, "cpu")
    flat = np.full((128, 160), 120, np.uint8)
    cases = {"too flat": (flat, flat + 3), "implausible": _line_pair(),
             "too small": (_scene(1, 40, 400), _scene(1, 40, 400))}
    for what, (a, b) in cases.items():
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            fused = bafusion.fuse(a, b, model=nets, align="auto")
        lines = [str(w.message) for w in got if issubclass(w.category, AutoAlignWarning)]
        assert len(lines) == 1 and lines[0].startswith('align="auto": source 2') and \
            lines[0].endswith("fused as registered"), (what, [str(w.message) for w in got])
        assert np.array_equal(fused, bafusion.fuse(a, b, model=nets, align="none")), what
    with warnings.catch_warnings():  # a shot that moves is aligned: nothing to warn of
        warnings.simplefilter("error", AutoAlignWarning)
        s = _scene(3, 160, 200)
        bafusion.fuse(s[10:138, 10:170], s[14:142, 13:173], model=nets, align="auto")


def test_nets_or_params_passed_as_a_source_say_which_keyword_takes_them() -> None:
    """fuse(a, b, nets) said only 'source 3: expected a file path or a numpy array, got FusionNets'."""
    from bafusion.fusion import FusionNets

    a = np.zeros((8, 8), np.uint8)
    nets = object.__new__(FusionNets)  # the type is what counts
    with pytest.raises(UserError, match=r"source 3: expected a file path or a numpy array, got FusionNets \(the nets: "
                                        r"pass them as model=\.\.\., e\.g\. fuse\(a, b, model=nets\)\)"):
        bafusion.fuse(a, a, nets)
    with pytest.raises(UserError, match=r"got FusionParams \(the fusion parameters: pass them as params=\.\.\.\)"):
        bafusion.fuse(a, a, FusionParams())


def test_fusion_nets_have_a_short_repr(tiny_nets: Path) -> None:
    """``nets`` in a notebook printed the whole torch module tree of both nets (hundreds of
    lines); it is one line: the depths, patch sides, device and model folder."""
    import bafusion

    nets = bafusion.load_model(tiny_nets, device="cpu")
    text = repr(nets)
    assert "\n" not in text and len(text) < 300, text
    assert text.startswith("FusionNets(") and "ResNet-8" in text and "device=cpu" in text, text
    assert str(tiny_nets) in text and "Conv2d" not in text
    assert str(nets) == text


def test_fuse_reloads_a_model_folder_that_changed_or_another_of_the_same_name(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """fuse(a, b, model='m') cached the nets on the string 'm': after a chdir to a folder with
    another 'm', or after the nets in 'm' were retrained, it fused with the first nets."""
    import os

    import torch

    from bafusion.nets.model import build_model, save_model
    from conftest import make_tiny_nets

    def other_nets(folder: Path, seed: int) -> None:
        torch.manual_seed(seed)
        for kind in ("initial", "boundary"):
            save_model(build_model(8), folder / f"{kind}.pt", {"patch": 12})

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (40, 36), dtype=np.uint8)
    b = rng.integers(0, 256, (40, 36), dtype=np.uint8)

    def direct(folder: Path) -> np.ndarray:
        return fuse_images(a, b, load_nets_from_dir(folder, "cpu")).fused

    make_tiny_nets(tmp_path / "one" / "m")
    other_nets(tmp_path / "two" / "m", 5)
    assert not np.array_equal(direct(tmp_path / "one" / "m"), direct(tmp_path / "two" / "m"))  # a test that tells
    monkeypatch.chdir(tmp_path / "one")
    assert np.array_equal(bafusion.fuse(a, b, model="m", device="cpu"), direct(tmp_path / "one" / "m"))
    monkeypatch.chdir(tmp_path / "two")  # another folder named m
    assert np.array_equal(bafusion.fuse(a, b, model="m", device="cpu"), direct(tmp_path / "two" / "m"))
    # the nets of a folder retrained in place (a later mtime): reloaded
    other_nets(tmp_path / "two" / "m", 9)
    for f in (tmp_path / "two" / "m").iterdir():
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert np.array_equal(bafusion.fuse(a, b, model="m", device="cpu"), direct(tmp_path / "two" / "m"))


def test_the_nets_cache_is_safe_from_threads_and_tells_a_replaced_file(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """fuse() from two threads with more than 4 models raised KeyError: one thread found its
    nets in the cache, another evicted them, the first's move_to_end failed. And a net file
    replaced by one of the same size and mtime (cp -p, a rename) kept the old nets."""
    import os
    import threading
    import time
    from collections import OrderedDict

    import bafusion.fusion.api as api

    found = threading.Event()

    class SlowCache(OrderedDict):  # the finding thread is paused right after its lookup
        def get(self, key, default=None):
            value = super().get(key, default)
            if value is not None and threading.current_thread().name == "finder":
                found.set()
                time.sleep(0.3)
            return value

    cache = SlowCache()
    monkeypatch.setattr(api, "_NETS_CACHE", cache)
    monkeypatch.setattr(api, "_model_identity", lambda model: (str(model),))
    monkeypatch.setattr(api, "_load_nets", lambda model, device, warn=True: f"nets of {model}")
    assert api._cached_nets("m0", "cpu") == "nets of m0"
    errors: list[BaseException] = []

    def find() -> None:
        try:
            assert api._cached_nets("m0", "cpu") == "nets of m0"
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    finder = threading.Thread(target=find, name="finder")
    finder.start()
    assert found.wait(10)
    for i in range(1, 6):  # evicts m0 while the finder holds it
        api._cached_nets(f"m{i}", "cpu")
    finder.join()
    assert not errors, errors
    assert len(cache) == api._CACHE_SIZE and ("m5",) in {k[0] for k in cache}
    monkeypatch.undo()
    # the key changes with a file replaced by one of the same size and mtime (its inode)
    d = tmp_path / "m"
    d.mkdir()
    for name in ("initial.pt", "boundary.pt"):
        (d / name).write_bytes(b"x" * 10)
    before = api._model_identity(str(d))
    st = (d / "initial.pt").stat()
    (tmp_path / "new.pt").write_bytes(b"y" * 10)
    os.utime(tmp_path / "new.pt", ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(tmp_path / "new.pt", d / "initial.pt")
    assert api._model_identity(str(d)) != before


def test_fuse_warns_with_the_notes_of_the_fusion_named_the_python_way(tiny_nets: Path) -> None:
    """fuse(a, darker b) was silent, where fuse_images' notes (and the command line) say that B
    differs by about -1.6 EV and that --match-output-exposure brings it to A: the notes are
    FusionNoteWarnings, naming params={"match_output_exposure": True}."""
    import warnings

    from bafusion.fusion.rule import FusionNoteWarning

    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    dark = (a * 0.6).astype(np.uint8)
    nets = load_nets_from_dir(tiny_nets, "cpu")
    assert fuse_images(a, dark, nets).notes  # the rule notes it
    with pytest.warns(FusionNoteWarning) as got:
        fused = bafusion.fuse(a, dark, model=nets, align="none")
    assert np.array_equal(fused, fuse_images(a, dark, nets, names=("source 1", "source 2")).fused)
    (w,) = got
    text = str(w.message)
    assert text.startswith("source 2 differs from source 1 by about -1.6 EV (darker"), text
    assert 'params={"match_output_exposure": True} brings its pixels to the exposure' in text, text
    assert "--match-output-exposure" not in text and issubclass(FusionNoteWarning, UserWarning)
    with warnings.catch_warnings():  # matched: nothing to note
        warnings.simplefilter("error")
        bafusion.fuse(a, dark, model=nets, align="none", params={"match_output_exposure": True})
    with pytest.warns(FusionNoteWarning, match=r"source 3 differs from the fusion of source 1 and source 2"):
        bafusion.fuse(a, a, dark, model=nets, align="none")  # a chain: each step's notes
    with pytest.warns(FusionNoteWarning, match=r"source 3 differs from source 1"):
        bafusion.fuse(a, a, dark, model=nets, align="none", params={"stack_rule": "joint"})


def test_fuse_and_fuse_images_take_threads_and_restore_torchs(tiny_nets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The Python API ran on torch's default threads (both cores on a loaded 2-core machine: 3x
    slower than one), where the command line picks auto_threads(); threads= sets them for the
    call ("auto": the command line's choice; None: torch's setting as the caller left it) and
    torch's setting is restored; same fused image."""
    import torch

    import bafusion.threads

    rng = np.random.default_rng(4)
    a = rng.integers(0, 256, (48, 40), dtype=np.uint8)
    b = rng.integers(0, 256, (48, 40), dtype=np.uint8)
    nets = load_nets_from_dir(tiny_nets, "cpu")
    seen: list[int] = []
    conv = next(m for m in nets.initial.modules() if isinstance(m, torch.nn.Conv2d))  # dense scoring runs the trunk
    conv.register_forward_hook(lambda *_: seen.append(torch.get_num_threads()))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ref = fuse_images(a, b, nets, threads=2).fused
        assert seen and set(seen) == {2}
        for call in (lambda **kw: fuse_images(a, b, nets, **kw).fused,
                     lambda **kw: bafusion.fuse(a, b, model=nets, align="none", **kw),
                     lambda **kw: bafusion.fuse(a, b, a, model=nets, align="none", **kw),
                     lambda **kw: bafusion.fuse(a, b, a, model=nets, align="none", params={"stack_rule": "joint"},
                                                **kw)):
            seen.clear()
            got = call(threads=1)
            assert set(seen) == {1} and torch.get_num_threads() == 2
            if got.shape == ref.shape:
                assert np.array_equal(got, ref)
            monkeypatch.setattr(bafusion.threads, "auto_threads", lambda: 1)  # a loaded machine
            seen.clear()
            call(threads="auto")
            assert set(seen) == {1} and torch.get_num_threads() == 2
            seen.clear()
            call()  # None: the 2 threads the caller set (a benchmark's "2 threads" ran on 1)
            assert set(seen) == {2} and torch.get_num_threads() == 2
            monkeypatch.undo()
            seen.clear()
            call(threads=np.int64(1))  # a numpy integer, e.g. from an array of thread counts
            assert set(seen) == {1} and torch.get_num_threads() == 2
        for bad in (0, -1, 1.5, True, "2", np.float64(2.0), "Auto"):
            with pytest.raises(UserError, match=r"threads=.*: give a positive number of CPU threads"):
                bafusion.fuse(a, b, model=nets, threads=bad)
            with pytest.raises(UserError, match=r"threads=.*: give a positive number of CPU threads"):
                fuse_images(a, b, nets, threads=bad)
    finally:
        torch.set_num_threads(before)


_FORK_SCRIPT = """
import json, multiprocessing as mp, sys, warnings
import numpy as np, torch
import bafusion

nets = bafusion.load_model(sys.argv[1], device="cpu")
rng = np.random.default_rng(0)
a, b = (rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(2))


def job(threads):
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        fused = bafusion.fuse(a, b, model=nets, align="none", threads=threads)
    return fused, torch.get_num_threads(), [str(w.message) for w in said if w.category is RuntimeWarning]


if __name__ == "__main__":
    torch.set_num_threads(2)
    ref = job(None)[0]  # the parent's fusion on 2 threads: torch's OpenMP pool started
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map_async(job, [None, 2]).get(timeout=float(sys.argv[2]))  # hung forever before
    print(json.dumps({"same": [bool(np.array_equal(f, ref)) for f, _, _ in got], "threads": [n for _, n, _ in got],
                      "said": [s for _, _, s in got], "parent": torch.get_num_threads()}))
"""


@pytest.mark.skipif(sys.platform == "win32" or not hasattr(__import__("os"), "register_at_fork"),
                    reason="no fork")
def test_fuse_in_fork_started_pool_workers_after_a_fusion_in_the_parent(tiny_nets: Path, tmp_path: Path) -> None:
    """``multiprocessing.Pool`` (fork, Python 3.11's default on Linux) workers calling ``fuse()``
    after one ``fuse()`` in the parent on 2 torch threads waited forever in the convolution
    (torch's OpenMP pool does not survive a fork): torch gets 1 thread in a forked child, and
    ``threads=2`` there is lowered to 1 with a warning; the fused image is the parent's."""
    import json
    import os
    import signal

    script = tmp_path / "fork_pool.py"
    script.write_text(_FORK_SCRIPT, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_nets), "60"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the pool's workers too
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert got["same"] == [True, True] and got["threads"] == [1, 1] and got["parent"] == 2, got
    assert got["said"][0] == [], got
    (said,) = got["said"][1]
    assert said.startswith("threads=2: this process was forked from one that had loaded torch") and \
        'multiprocessing.get_context("spawn")' in said, said


_FORK_TORCH_ONLY_SCRIPT = """
import json, multiprocessing as mp, sys, time, warnings
import numpy as np


def job(nets):
    import bafusion  # not bafusion.threads: fuse() imports it, after torch
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(2))
    start = time.monotonic()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        bafusion.fuse(a, b, model=nets, align="none", threads=2)
        from bafusion.threads import torch_threads
        with torch_threads(2) as n:
            pass
    return n, [str(w.message) for w in said if w.category is RuntimeWarning], round(time.monotonic() - start, 1)


def in_a_pool(method, timeout):
    with mp.get_context(method).Pool(1) as pool:
        try:
            return pool.apply_async(job, (sys.argv[1],)).get(timeout=timeout)
        except mp.TimeoutError:
            pool.terminate()
            return "no result"


if __name__ == "__main__":
    got = {"before": in_a_pool("fork", 180)}  # forked before the parent loaded torch: the worker loads its own
    import torch
    torch.set_num_threads(2)
    with torch.no_grad():
        torch.nn.Conv2d(16, 16, 3)(torch.randn(8, 16, 128, 128))  # the parent's own torch work, 2 threads
    got["parent"] = sorted(m for m in sys.modules if m.startswith("bafusion"))
    got["after"] = in_a_pool("fork", float(sys.argv[2]))  # never returned: no at-fork handler of bafusion's
    got["spawn"] = in_a_pool("spawn", 180)  # a fresh interpreter: its own torch
    print(json.dumps(got))
"""


@pytest.mark.skipif(sys.platform == "win32" or not hasattr(__import__("os"), "register_at_fork"),
                    reason="no fork")
def test_fuse_in_fork_started_pool_workers_of_a_parent_that_ran_torch_without_bafusion(
        tiny_nets: Path, tmp_path: Path) -> None:
    """A parent that ran torch on 2 threads itself and never imported bafusion, whose
    fork-started pool workers import bafusion and call ``fuse(threads=2)``: the worker's fusion
    waited forever (torch's OpenMP pool does not survive a fork, and bafusion's at-fork handler
    was not registered in the parent); ``bafusion.threads`` sees at its import in the worker that
    torch came from the parent, and the worker fuses on 1 thread with the warning. A worker forked
    before the parent loaded torch, which loads its own, and a spawn worker get the 2 threads asked
    for. (Measured: the worker's fusion 2.2 s with the fix, no result in 45 s without.)"""
    import json
    import os
    import signal

    script = tmp_path / "fork_torch_only.py"
    script.write_text(_FORK_TORCH_ONLY_SCRIPT, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script), str(tiny_nets), "90"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the pool's workers too
        proc.communicate()
        raise
    assert proc.returncode == 0, err[-3000:]
    got = json.loads(out.strip().splitlines()[-1])
    assert got["parent"] == [], got
    assert got["before"][:2] == [2, []] and got["spawn"][:2] == [2, []], got
    assert got["after"] != "no result", got
    n, said, _ = got["after"]
    assert n == 1 and len(said) == 1, got
    assert said[0].startswith("threads=2: this process was forked from one that had loaded torch"), said


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_torch_inherited_only_in_fork_started_workers_whose_parent_maps_the_same_torch(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``bafusion.threads._torch_inherited``, read when the module is imported: true only in a
    fork-started ``multiprocessing`` worker (a ``ForkProcess``, or the default context's
    ``Process`` started with fork) whose parent maps torch where this process does; not in the
    main process, a spawn or forkserver worker, or a worker whose parent has no torch."""
    import multiprocessing
    import multiprocessing.process as mp_process
    import os
    import types

    import torch  # noqa: F401 - loaded here, as in the worker that fuses

    from bafusion.threads import _torch_inherited

    assert not _torch_inherited()  # this process: no multiprocessing parent
    here = types.SimpleNamespace(pid=os.getpid())  # a "parent" mapping torch where this process does
    monkeypatch.setattr(mp_process, "parent_process", lambda: here)
    import bafusion.threads

    monkeypatch.setattr(bafusion.threads, "_shared_dirty", lambda smaps, path: 4)  # its pages shared with the parent
    for method, inherited in (("fork", True), ("spawn", False), ("forkserver", False)):
        monkeypatch.setattr(mp_process, "current_process", lambda m=method: types.SimpleNamespace(_start_method=m))
        assert _torch_inherited() is inherited, method
    monkeypatch.setattr(bafusion.threads, "_shared_dirty", lambda smaps, path: 0)  # the same addresses, its own pages
    assert not _torch_inherited()
    monkeypatch.setattr(bafusion.threads, "_shared_dirty", lambda smaps, path: 4)
    monkeypatch.setattr(mp_process, "current_process", lambda: types.SimpleNamespace(_start_method=None))
    for method, inherited in (("fork", True), ("spawn", False)):  # multiprocessing.Process: the default context's
        monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False, m=method: m)
        assert _torch_inherited() is inherited, method
    with subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE) as other:
        try:  # a parent without torch: the worker loaded its own after the fork
            monkeypatch.setattr(mp_process, "parent_process", lambda: types.SimpleNamespace(pid=other.pid))
            assert not _torch_inherited()
        finally:
            other.communicate(b"")


_FORK_BEFORE_TORCH_SCRIPT = """
import json, multiprocessing as mp, os


def job(q):
    import torch
    import bafusion.threads as t
    with open("/proc/self/maps") as f:
        mine = t._torch_ranges(f.read(), os.path.realpath(torch._C.__file__))
    with open(f"/proc/{os.getppid()}/maps") as f:
        theirs = t._torch_ranges(f.read(), os.path.realpath(torch._C.__file__))
    q.put([t._forked_after_torch, bool(mine & theirs)])


if __name__ == "__main__":
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=job, args=(q,))  # forked before the parent loads torch; both load it after
    p.start()
    import torch
    got = {"before": q.get(timeout=300)}
    p.join()
    p = ctx.Process(target=job, args=(q,))  # forked after: torch inherited
    p.start()
    got["after"] = q.get(timeout=300)
    p.join()
    print(json.dumps(got))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/PID/maps")
def test_a_process_forked_before_the_parent_loaded_torch_keeps_its_threads_at_torchs_addresses(
        tmp_path: Path) -> None:
    """A fork-started ``multiprocessing.Process`` made before its parent imported torch, which
    imports torch itself and then ``bafusion.threads``, maps torch at the very addresses where the
    parent does (both loaded it after the fork from the same layout: 5 runs of 5 here): the
    address check alone took its own torch as inherited and lowered it to 1 thread with the
    fork warning (at 5d8c088). Its torch's written pages are its own, not shared with the parent:
    not lowered. A Process forked after the parent's ``import torch`` still is."""
    import json

    script = tmp_path / "fork_before_torch.py"
    script.write_text(_FORK_BEFORE_TORCH_SCRIPT, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["after"] == [True, True], got
    assert got["before"][0] is False, got  # lowered at 5d8c088 where the addresses were the same
    if not got["before"][1]:
        pytest.skip(f"torch mapped elsewhere in the worker forked before it was loaded: the case not met ({got})")


def test_a_shipped_models_name_is_the_shipped_model_beside_a_folder_of_that_name_without_nets(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """load_model('default') where the working directory has a folder 'default' (an output
    folder) failed 'default/initial.pt: model file not found', not a word of the shipped model
    of that name: a folder holding neither model file is not taken for the model, and a warning
    says so (it used the shipped model silently); './default' still names the folder."""
    import argparse
    import warnings

    from bafusion.cli.common import nets_from_args
    from bafusion.fusion.models import PACKAGE_DIR, REPO_ROOT, ModelNameWarning

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    (tmp_path / "default" / "fused.png").write_bytes(b"")
    said = "default: the folder holds no nets; using the shipped model 'default' (write ./default to mean the folder)"
    with pytest.warns(ModelNameWarning, match=r"^default: the folder holds no nets; using the shipped model "
                                              r"'default' \(write \./default to mean the folder\)$") as caught:
        nets = bafusion.load_model("default", device="cpu")
    assert len(caught) == 1
    roots = [PACKAGE_DIR / "models", *([REPO_ROOT / "models"] if REPO_ROOT is not None else [])]
    shipped = {str(root / "default" / "initial.pt") for root in roots}
    assert nets.sources[0] in shipped, nets.sources
    with pytest.warns(ModelNameWarning) as caught:  # once, though fuse() looks the folder up twice
        bafusion.fuse(np.zeros((40, 36), np.uint8), np.zeros((40, 36), np.uint8), model="default", device="cpu")
    assert [str(w.message) for w in caught if issubclass(w.category, ModelNameWarning)] == [said]
    # the command line (--model default): one line on stderr
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not also a Python warning
        nets_from_args(argparse.Namespace(command="fuse-dir", initial=None, boundary=None), "cpu", "default")
    assert capsys.readouterr().err == f"bafusion fuse-dir: warning: {said}\n"
    with pytest.raises(UserError, match=r"default/initial\.pt: model file not found"):
        bafusion.load_model("./default", device="cpu")
    from conftest import make_tiny_nets

    make_tiny_nets(tmp_path / "default")  # a folder that holds nets is the folder
    assert bafusion.load_model("default", device="cpu").sources[0] == str(Path("default") / "initial.pt")


def test_the_model_name_warning_points_at_the_users_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ModelNameWarning of model="default" beside an empty ./default pointed at models.py
    (find_model_dir's own `return _find_model_dir(...)`; inside the package for load_model and
    fuse too), not at the line that called: it names the caller's file for each entry point."""
    from bafusion.fusion import find_model_dir, load_nets_from_dir
    from bafusion.fusion.models import ModelNameWarning

    monkeypatch.chdir(tmp_path)
    (tmp_path / "default").mkdir()
    calls = {
        "find_model_dir": lambda: find_model_dir("default"),
        "load_nets_from_dir": lambda: load_nets_from_dir("default", "cpu"),
        "load_model": lambda: bafusion.load_model("default", device="cpu"),
        "fuse": lambda: bafusion.fuse(np.zeros((40, 36), np.uint8), np.zeros((40, 36), np.uint8), model="default",
                                      device="cpu"),
    }
    for name, call in calls.items():
        with pytest.warns(ModelNameWarning) as caught:
            call()
        got = [w for w in caught if issubclass(w.category, ModelNameWarning)]
        assert len(got) == 1 and got[0].filename == __file__, (name, got[0].filename)


def test_the_command_lines_model_lookup_leaves_the_warnings_of_loading_nets_to_their_filters(
        tiny_nets: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The command line records the lookup of --model (its ModelNameWarning, said as one line):
    it recorded the loading of the nets too and emitted their warnings again with
    warnings.warn_explicit, without their module, so a filter by module no longer applied (one
    that lets a module's warnings through under "error" raised them)."""
    import argparse
    import re
    import warnings

    import bafusion.fusion.models as models
    from bafusion.cli.common import nets_from_args

    real = models._load_files  # load_nets as the command line calls it (worded for its options)

    def load_files(*a: object, **kw: object) -> object:
        warnings.warn("probe: a warning of loading the nets", UserWarning)
        return real(*a, **kw)

    monkeypatch.setattr(models, "_load_files", load_files)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("error")
        warnings.filterwarnings("always", category=UserWarning, module=re.escape(__name__))
        nets = nets_from_args(argparse.Namespace(command="fuse", initial=None, boundary=None), "cpu", str(tiny_nets))
    assert nets.sources[0] == str(tiny_nets / "initial.pt")
    assert [str(w.message) for w in caught] == ["probe: a warning of loading the nets"]


def test_fuse_of_float_or_int_arrays_says_how_to_convert_them_and_is_a_type_error(tiny_nets: Path) -> None:
    """fuse(a / 255., b / 255.) said only 'sources must be uint8 or uint16 arrays, got float64':
    it names bafusion.io.to_uint8 (as write_image does), and the error is also a TypeError."""
    from bafusion.errors import InputTypeError

    a = np.zeros((40, 36), np.uint8)
    kw = {"model": str(tiny_nets), "device": "cpu"}
    with pytest.raises(UserError, match=r"^source 1: sources must be uint8 or uint16 arrays, got float64 \(a float "
                                        r"image: bafusion\.io\.to_uint8\(x \* 255\) converts one in \[0, 1\], "
                                        r"to_uint8\(x\) one on the \[0, 255\] scale\)$") as e:
        bafusion.fuse(a / 255.0, a / 255.0, **kw)
    assert isinstance(e.value, TypeError) and isinstance(e.value, InputTypeError)
    with pytest.raises(TypeError, match=r"^source 2: sources must be uint8 or uint16 arrays, got int64 \(an integer "
                                        r"image of 8-bit values: x\.astype\(numpy\.uint8\)\)$"):
        bafusion.fuse(a, a.astype(np.int64), **kw)
    # values above 255 (a 16-bit file read as PIL mode "I"): astype(numpy.uint8) wrapped 1000 to 232
    with pytest.raises(TypeError, match=r"got int32 \(an integer image of values up to 1000: x\.astype\(numpy\.uint16\), "
                                        r"a 16-bit image; x\.astype\(numpy\.uint8\) would wrap the values above 255\)$"):
        bafusion.fuse(a, np.full(a.shape, 1000, np.int32), **kw)
    with pytest.raises(TypeError, match=r"got int64 \(an integer image of values from -3 to 70000, outside 0\.\.65535: "
                                        r"astype alone would wrap them; clip or rescale first, e\.g\. "
                                        r"numpy\.clip\(x, 0, 65535\)\.astype\(numpy\.uint16\)\)$"):
        bafusion.fuse(a, np.array([[-3, 70000]] * 4, np.int64), **kw)
    with pytest.raises(TypeError, match=r"outside 0\.\.255: .* numpy\.clip\(x, 0, 255\)\.astype\(numpy\.uint8\)\)$"):
        bafusion.fuse(a, np.full(a.shape, -1, np.int16), **kw)
    with pytest.raises(TypeError, match=r"source 2: expected a file path or a numpy array, got int"):
        bafusion.fuse(a, 3, **kw)


def test_an_empty_path_is_named_empty(tiny_nets: Path) -> None:
    """fuse('a.png', '') said '.: not a regular file' (pathlib reads '' as '.'), as did
    read_image('') and bafusion fuse a.png ''."""
    from bafusion.errors import InputFileError

    a = Path(__file__).parent / "data" / "never-read.png"
    with pytest.raises(InputFileError, match=r"^source 2: the path is empty \(''\): no file named$"):
        bafusion.fuse(a, "", model=str(tiny_nets), device="cpu")
    with pytest.raises(InputFileError, match=r"^'': the path is empty: no file named$"):
        bafusion.read_image("")
    with pytest.raises(InputFileError, match=r"^'': the path is empty: no file named$"):
        bafusion.read_images(["", a])


def test_align_auto_names_a_runaway_estimate_too_flat_or_too_small_not_by_its_figure(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A registration that ran away on a nearly flat 64 px crop said 'the motion estimate
    (232591.3 px) matches the shots worse than no motion': an estimate that moves a shot further
    than its own size is said as too flat or too small to judge, without the figure."""
    import bafusion.fusion.scene as scene
    from bafusion.fusion.batch import auto_alignment

    im = np.zeros((64, 64), np.uint8)
    for verdict in ("failed", "implausible"):
        monkeypatch.setattr(scene, "shot_motions", lambda images, v=verdict: [
            scene.ShotMotion(1, 232591.3, v, reason="scale 5200.00")])
        model, [(said, text)] = auto_alignment([im, im], ["a.png", "b.png"], True)
        assert (model, said) == ("none", verdict)
        assert text == ("b.png: too flat or too small to judge its motion (its motion estimate ran away, moving it "
                        "further than the size of a.png), taken for a failure: fused as registered"), text
    monkeypatch.setattr(scene, "shot_motions", lambda images: [scene.ShotMotion(1, 40.0, "failed")])
    assert "the motion estimate (40.0 px) matches the shots worse" in auto_alignment([im, im], ["a", "b"], True)[1][0][1]


@pytest.mark.filterwarnings("ignore::bafusion.fusion.rule.FusionNoteWarning")  # the crop's +0.2 EV: not tested here
def test_align_auto_on_a_flat_crop_of_a_real_pair_gives_no_absurd_figure(shared_data: Path, tiny_nets: Path) -> None:
    """The 64 px top-left crop of g01-clock, as the report found it."""
    from bafusion.fusion.scene import AutoAlignWarning

    a, b = (np.asarray(bafusion.read_image(shared_data / "eval" / "classic" / f"g01-clock-{s}.png"))[:64, :64]
            for s in "AB")
    with pytest.warns(AutoAlignWarning) as got:
        bafusion.fuse(a, b, model=load_nets_from_dir(tiny_nets, "cpu"), align="auto")
    text = " ".join(str(w.message) for w in got if issubclass(w.category, AutoAlignWarning))
    assert "too flat or too small to judge its motion" in text and "232591" not in text, text


def test_match_output_exposure_keeps_12_bit_arrays_within_12_bits() -> None:
    """uint16 arrays of 12-bit data (0..4095: 12 bits, as io.common_bits takes unmarked data) of
    an overexposed A and a darker B: match_output_exposure's gains (> 1) pushed B's highlights,
    clipped in A, beyond 4095 (the gains clipped at 65535): a "12-bit" result that is not. They
    are clipped at the data's bits now (joint stack rule too); 16-bit data is as before."""
    import warnings

    from bafusion.fusion.batch import compose_full

    a8, b8 = _focus_pair()
    bright8 = np.clip(np.round(a8 * 1.6), 0, 255).astype(np.uint8)  # A overexposed: its highlights clipped
    to12 = lambda x: np.round(x * (4095 / 255)).astype(np.uint16)  # noqa: E731
    a12, b12 = to12(bright8), to12(b8)
    nets = bafusion.load_model("default", device="cpu")
    params = FusionParams(min_region=0.0, working_min=0, match_output_exposure=True)
    res = fuse_images(bright8, b8, nets, params)
    assert res.gains is not None and res.gains.min() > 1.3 and 0.05 < res.decision.mean() < 0.95
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f12 = bafusion.fuse(a12, b12, model=nets, params=params)
        assert compose_full([a12, b12], [res.decision], [res.gains]).max() > 4095  # B's highlights at 16 bits
        assert f12.dtype == np.uint16 and f12.max() == 4095, f12.max()
        p3 = FusionParams(min_region=0.0, working_min=0, match_output_exposure=True, stack_rule="joint")
        assert bafusion.fuse(a12, b12, a12, model=nets, params=p3).max() <= 4095
        a16, b16 = _deep(bright8, 1), _deep(b8, 2)  # 16-bit data: clipped at 65535, as before
        f16 = bafusion.fuse(a16, b16, model=nets, params=params)
        assert np.array_equal(f16, compose_full([a16, b16], [res.decision], [res.gains])) and f16.max() == 65535


def test_fuse_keeps_16_bits_with_the_gains_of_match_output_exposure() -> None:
    """fuse(a16, darker b16, params={"match_output_exposure": True}) brought B to A in the uint8
    fusion only: the uint16 one took B's raw pixels (a 128 px Lytro crop: mean 87 against the
    uint8 fusion's 146), where bafusion fuse applies the gains at 16 bits too."""
    import warnings

    from bafusion.fusion.batch import compose_full, compose_index
    from bafusion.fusion.stack import fuse_stack_joint

    a8, b8 = _focus_pair()
    dark8 = np.round(b8 * 0.6).astype(np.uint8)
    a16, dark16 = _deep(a8, 1), _deep(dark8, 2)
    nets = bafusion.load_model("default", device="cpu")
    params = FusionParams(min_region=0.0, working_min=0, match_output_exposure=True)
    res = fuse_images(a8, dark8, nets, params)
    assert 0.05 < res.decision.mean() < 0.95 and res.gains is not None  # B contributes, brightened
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        f16 = bafusion.fuse(a16, dark16, model=nets, params=params)
        assert np.array_equal(f16, compose_full([a16, dark16], [res.decision], [res.gains]))
        assert np.abs(scale16(f16).astype(int) - res.fused).max() <= 1
        p3 = FusionParams(min_region=0.0, working_min=0, match_output_exposure=True, stack_rule="joint")
        joint = fuse_stack_joint([a8, dark8, a8], nets, p3, ["1", "2", "3"])
        assert np.array_equal(bafusion.fuse(a16, dark16, a16, model=nets, params=p3),
                              compose_index([a16, dark16, a16], joint.index, joint.gains))
        assert np.abs(scale16(bafusion.fuse(a16, dark16, a16, model=nets, params=p3)).astype(int)
                      - joint.fused).max() <= 1


def test_from_params_refuses_fields_of_the_rule_at_the_top_level() -> None:
    """FusionParams.from_params({"l": 4}) returned l=8 in silence: it reads the ``fuse`` section
    of a whole parameter mapping. Fields of the rule without one are refused, pointing to
    from_mapping; a whole mapping still reads its section."""
    with pytest.raises(UserError, match=r"^parameters: l at the top level, and no 'fuse' section: .*from_mapping"):
        FusionParams.from_params({"l": 4})
    # an empty `fuse:` in YAML (None) with a stray top-level l gave l=8 in silence
    for empty in (None, {}):
        with pytest.raises(UserError, match=r"^p.yaml: l at the top level, and an empty 'fuse' section: "
                                            r".*put the rule's fields in its 'fuse' section"):
            FusionParams.from_params({"fuse": empty, "l": 4}, "p.yaml")
    with pytest.raises(UserError, match=r"^parameters: low at the top level, beside the 'fuse' section"):
        FusionParams.from_params({"fuse": {"l": 4}, "low": 0.2})
    assert FusionParams.from_params({"fuse": {"l": 4}, "seed": 1}).l == 4
    assert FusionParams.from_params({"seed": 1}) == FusionParams()
    assert FusionParams.from_mapping({"l": 4}).l == 4


def test_from_params_refuses_the_fuse_sections_settings_at_the_top_level() -> None:
    """FusionParams.from_params refused the rule's fields at the top level, but took
    ``{"device": "cpu", "threads": 2, "alpha": 5}`` there in silence, where the commands and the
    pipeline read those settings from the ``fuse`` section only. They are refused likewise, the
    message saying where they belong; in the section they are checked and left to the commands."""
    with pytest.raises(UserError, match=r"^parameters: device at the top level, and no 'fuse' section: fuse.device "
                                        r"is a setting of the commands and the pipeline, read from the 'fuse' section "
                                        r"only: put it there$"):
        FusionParams.from_params({"device": "cpu"})
    with pytest.raises(UserError, match=r"^p.yaml: threads, alpha at the top level, beside the 'fuse' section: "
                                        r"fuse.threads, fuse.alpha are settings .*: put them there$"):
        FusionParams.from_params({"fuse": {"l": 4}, "threads": 2, "alpha": 5}, "p.yaml")
    with pytest.raises(UserError, match=r"^parameters: l, device at the top level, and an empty 'fuse' section: "
                                        r".*from_mapping \(fuse.device is a setting .*put it there\)$"):
        FusionParams.from_params({"fuse": None, "l": 4, "device": "cpu"})
    assert FusionParams.from_params({"fuse": {"l": 4, "device": "cpu", "threads": 2, "alpha": 5}}).l == 4


def test_nets_are_float32_and_fuse_works_under_a_float64_default_dtype(tmp_path: Path, tiny_nets: Path) -> None:
    """torch.set_default_dtype(torch.float64) (common in scientific notebooks) before loading
    made the nets float64 (built under the caller's default, the float32 weights copied in) and
    fusion, which feeds float32, failed with torch's "Input type (float) and bias type (double)";
    the nets bafusion builds are float32 whatever the default, the caller's default stays."""
    import torch

    from bafusion.nets.model import CifarResNet, ResNetSpec, build_model, ensemble

    a, b, pa, pb = _pair(tmp_path)
    want = bafusion.fuse(a, b, model=bafusion.load_model(tiny_nets, device="cpu"))
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        nets = bafusion.load_model(tiny_nets, device="cpu")
        for net in (nets.initial, nets.boundary, build_model(8), ensemble([build_model(8), build_model(8)])):
            assert {p.dtype for p in net.state_dict().values() if p.is_floating_point()} == {torch.float32}
        assert np.array_equal(bafusion.fuse(a, b, model=nets), want)
        assert np.array_equal(bafusion.fuse(pa, pb, model=str(tiny_nets), device="cpu"), want)
        with torch.device("meta"):
            assert CifarResNet(ResNetSpec(depth=8)).fc.weight.dtype == torch.float32
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(before)


def test_fuse_warns_what_the_command_line_says_of_the_files_colours(tmp_path: Path, tiny_nets: Path) -> None:
    """``bafusion.fuse`` was silent where ``bafusion fuse`` says that B's colour profile differs
    from A's, that a CMYK file is converted without colour management and that gray and colour
    shots are mixed (it read the files without their notes). Each is a FusionNoteWarning now, the
    profile line saying that colours are not converted (not what a written file carries); lines
    on what an output file keeps (the sources' XMP) are not issued for an array."""
    import warnings

    from PIL import ImageCms

    from bafusion.fusion.rule import FusionNoteWarning

    a, b, pa, pb = _pair(tmp_path)
    kw = {"model": str(tiny_nets), "device": "cpu", "align": "none"}
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    Image.fromarray(a).save(pa, icc_profile=srgb[:-4] + b"P3XX")  # a distinct RGB profile
    Image.fromarray(b).save(pb, icc_profile=srgb)

    def notes(*sources: object) -> list[str]:
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            bafusion.fuse(*sources, **kw)
        assert all(w.category is FusionNoteWarning for w in got), [str(w.message) for w in got]
        assert all(w.filename == __file__ for w in got), [w.filename for w in got]  # stacklevel: the caller's line
        return [str(w.message) for w in got]

    assert notes(pa, pb) == [f"{pb} has a different colour profile from {pa} (both 'sRGB built-in', of different "
                             "contents); colours are not converted (the fused array holds each shot's values as "
                             "stored)"]
    ca = tmp_path / "c.jpg"
    Image.fromarray(a).convert("CMYK").save(ca, quality=95)
    Image.fromarray(b).save(pb)
    assert notes(ca, pb) == [f"{ca} is CMYK: converted to RGB without colour management (its colours are "
                             "approximate)"]
    ga = tmp_path / "g.png"
    Image.fromarray(a[..., 0]).save(ga)
    mixed = "is gray and {} colour: the result is gray where it is taken from it"
    (text,) = notes(ga, pb)
    assert text.startswith(f"{ga} " + mixed.format(pb)), text
    (text,) = notes(a[..., 0], pb)  # an array among the sources: named as the API names it
    assert text.startswith("source 1 " + mixed.format(pb)), text
    (text,) = notes(pa, b[..., 0])
    assert text.startswith(f"source 2 is gray and {pa} colour"), text
    xa = tmp_path / "x.jpg"
    Image.fromarray(a).save(xa, quality=95, xmp=b"<x:xmpmeta xmlns:x='adobe:ns:meta/'/>")
    Image.fromarray(b).save(pb)
    assert cli_notes(xa, pb, tiny_nets, tmp_path)  # the command line says its XMP is not kept
    assert notes(xa, pb) == []  # the array keeps nothing: not said


def cli_notes(pa: Path, pb: Path, nets: Path, tmp_path: Path) -> list[str]:
    """The lines ``bafusion fuse`` prints on stderr for the pair, written to a PNG."""
    proc = subprocess.run([sys.executable, "-m", "bafusion", "fuse", str(pa), str(pb), "-o", str(tmp_path / "f.png"),
                           "--model", str(nets), "--device", "cpu", "--align", "none", "--no-progress"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return [line for line in proc.stderr.splitlines() if line.startswith("bafusion fuse: ")]


@pytest.mark.parametrize("suffix", [".jpg", ".png", ".tif"])
def test_the_fused_array_written_with_output_metadata_is_what_bafusion_fuse_writes(
        tmp_path: Path, tiny_nets: Path, suffix: str) -> None:
    """The docstring's ``write_image("fused.png", fuse("near.jpg", "far.jpg"))`` wrote the fusion
    without the first shot's ICC profile (a Display P3 pair shown desaturated), EXIF and
    resolution, and no public function gave them. ``write_image(out, fused,
    **output_metadata(first))`` writes the file ``bafusion fuse`` writes, byte for byte."""
    from PIL import ImageCms

    from bafusion.io import output_metadata, write_image

    a, b, _, _ = _pair(tmp_path)
    pa, pb = tmp_path / "a.jpg", tmp_path / "b.jpg"
    exif = Image.Exif()
    exif[0x010F], exif[0x0110] = "Maker", "Cam 1"
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()[:-4] + b"P3XX"
    Image.fromarray(a).save(pa, quality=95, subsampling="4:2:2", exif=exif, icc_profile=icc, dpi=(300, 300))
    Image.fromarray(b).save(pb, quality=95)
    out = tmp_path / f"cli{suffix}"
    proc = subprocess.run([sys.executable, "-m", "bafusion", "fuse", str(pa), str(pb), "-o", str(out), "--model",
                           str(tiny_nets), "--device", "cpu", "--align", "none"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    with pytest.warns(UserWarning):  # B's other profile
        fused = bafusion.fuse(pa, pb, model=str(tiny_nets), device="cpu", align="none")
    plain, like = tmp_path / f"plain{suffix}", tmp_path / f"like{suffix}"
    write_image(plain, fused)
    write_image(like, fused, **output_metadata(pa))
    assert like.read_bytes() == out.read_bytes()
    with Image.open(like) as im, Image.open(plain) as bare:
        assert im.info.get("icc_profile") == icc and "icc_profile" not in bare.info
        assert im.getexif().get(0x0110) == "Cam 1" and 0x0110 not in bare.getexif()
        assert tuple(map(round, im.info["dpi"])) == (300, 300)


def test_an_arrays_dropped_alpha_is_warned_as_a_files_is_said() -> None:
    """``fuse_images``/``fuse``/``fuse_stack`` dropped an (H, W, 4) or (H, W, 2) array's alpha without
    the line a file's gets; now a FusionNoteWarning names the source, unless the alpha is opaque
    everywhere (no loss, as for a file)."""
    import warnings

    from bafusion.fusion.rule import FusionNoteWarning, source_channels

    rgb = np.random.default_rng(0).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    opaque = np.full((6, 5, 1), 255, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert source_channels(np.concatenate([rgb, opaque], axis=2), "A").shape == (6, 5, 3)
        assert source_channels(np.concatenate([rgb[..., :1], opaque.astype(np.uint16) * 257], axis=2).astype(np.uint16),
                               "A").shape == (6, 5)
    seen = opaque.copy()
    seen[0, 0] = 254
    for s, name in ((np.concatenate([rgb, seen], axis=2), "B"), (np.concatenate([rgb[..., :1], seen], axis=2), "source 2")):
        with pytest.warns(FusionNoteWarning) as got:
            source_channels(s, name)
        assert [str(w.message) for w in got] == [
            f"{name}: its alpha channel (transparency) is dropped: its colours are used as on full opacity"]


@pytest.mark.parametrize("call", ["fuse", "fuse_images", "fuse_stack"])
def test_an_arrays_dropped_alpha_is_warned_at_the_callers_line(tiny_nets: Path, call: str) -> None:
    """The alpha warning pointed into bafusion (api.py, rule.py: "images = [source_channels(...")
    where the other notes of bafusion.fuse point at the caller's line: a filter by module or a
    look at the line shown found bafusion's code. Now it is the caller's file, for each entry point."""
    import bafusion.fusion as fusion
    from bafusion.fusion.rule import FusionNoteWarning

    nets = load_nets_from_dir(tiny_nets, "cpu")
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    a[..., 3] = 255
    a[0, 0, 3] = 0
    b = a[..., :3].copy()
    with pytest.warns(FusionNoteWarning, match="alpha channel") as got:
        if call == "fuse":
            bafusion.fuse(a, b, model=nets)
        elif call == "fuse_images":
            fusion.fuse_images(a, b, nets)
        else:
            fusion.fuse_stack([a, b], nets)
    said = [w for w in got if "alpha channel" in str(w.message)]
    assert [w.filename for w in said] == [__file__], [(w.filename, w.lineno) for w in said]


def test_loading_and_fusing_leave_the_callers_torch_random_numbers_alone(tiny_nets: Path) -> None:
    """A user who seeds torch, then loads the nets or fuses, draws the numbers the seed gives:
    building each net before its weights were loaded drew its random init from torch's global
    generator (``torch.rand`` after ``load_model`` gave 0.717 for seed 0, not 0.496)."""
    import torch

    torch.manual_seed(0)
    want = torch.rand(4)
    rng = np.random.default_rng(2)
    a, b = rng.integers(0, 256, (24, 20), dtype=np.uint8), rng.integers(0, 256, (24, 20), dtype=np.uint8)
    for call in (lambda: bafusion.load_model("default", device="cpu"),
                 lambda: bafusion.load_model(tiny_nets, device="cpu"),
                 lambda: bafusion.fuse(a, b, model=tiny_nets, align="none")):
        torch.manual_seed(0)
        call()
        assert torch.equal(torch.rand(4), want)


def test_a_load_in_another_thread_leaves_the_callers_random_numbers_alone(
    tiny_nets: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """load_model in a worker thread while the caller draws: a load that saved torch's global
    generator, built its net and put the saved state back (``torch.random.fork_rng``) rewound
    the caller's draws made meanwhile, which then came again (the same "random" numbers twice).
    The net is built on the meta device (no draws, nothing to put back), its weights all read
    from the file."""
    import threading

    import torch

    from bafusion.nets import model as model_mod

    in_build, go_on = threading.Event(), threading.Event()

    class HeldInItsBuild(model_mod.CifarResNet):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            if next(self.parameters()).device.type != "meta":  # the net itself, built on the CPU
                in_build.set()
                go_on.wait(10)

    monkeypatch.setattr(model_mod, "CifarResNet", HeldInItsBuild)
    torch.manual_seed(0)
    want = [torch.rand(1).item(), torch.rand(1).item()]
    torch.manual_seed(0)
    loaded: list[object] = []
    worker = threading.Thread(target=lambda: loaded.append(bafusion.load_model(tiny_nets, device="cpu")))
    worker.start()
    while not in_build.is_set() and worker.is_alive():
        time.sleep(0.01)
    got = [torch.rand(1).item()]  # while the worker builds its net (if it builds one on the CPU)
    go_on.set()
    worker.join(20)
    got.append(torch.rand(1).item())
    assert loaded and got == want
