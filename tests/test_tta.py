"""Test-time augmentation of the nets' scores (``fuse.tta``, :func:`bafusion.fusion.scoring.score`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from bafusion.config import load_preset
from bafusion.fusion import FusionParams, load_nets_from_dir
from bafusion.fusion.scoring import TTA_VIEWS, score

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def nets(tmp_path_factory: pytest.TempPathFactory):
    from conftest import make_tiny_nets

    return load_nets_from_dir(make_tiny_nets(tmp_path_factory.mktemp("tta") / "nets"), device="cpu")


def _pair(h: int = 44, w: int = 58) -> tuple[np.ndarray, np.ndarray]:
    """A textured scene, sharp in A on the left and in B on the right (sizes not multiples of
    4, so that the dense grid does not line up with the rotated views)."""
    rng = np.random.default_rng(3)
    scene = ndimage.gaussian_filter(rng.uniform(0, 255, (h, w)), 0.7)
    blur = ndimage.gaussian_filter(scene, 2.5)
    left = np.zeros((h, w), bool)
    left[:, : w // 2] = True
    a = np.where(left, scene, blur)
    b = np.where(left, blur, scene)
    return np.round(a).astype(np.uint8), np.round(b).astype(np.uint8)


def _score(nets, a, b, tta: str, mask=None) -> np.ndarray:
    params = FusionParams(tta=tta, working_min=0)
    return score(nets.initial, a, b, nets.patch_initial, params, 4, mask=mask, device="cpu")


def test_views_are_the_training_augmentations() -> None:
    assert len(TTA_VIEWS["none"]) == 1 and len(TTA_VIEWS["swap"]) == 2
    assert len(set(TTA_VIEWS["dihedral"])) == 8 and len(set(TTA_VIEWS["all"])) == 16
    assert set(TTA_VIEWS["dihedral"]) < set(TTA_VIEWS["all"])


def test_swap_makes_the_score_antisymmetric_in_a_and_b(nets) -> None:
    a, b = _pair()
    plain_ab, plain_ba = _score(nets, a, b, "none"), _score(nets, b, a, "none")
    # an untrained net is far from antisymmetric: the test below can fail
    assert np.abs(plain_ab + plain_ba - 1).max() > 1e-3
    s_ab, s_ba = _score(nets, a, b, "swap"), _score(nets, b, a, "swap")
    np.testing.assert_allclose(s_ab + s_ba, 1.0, atol=1e-6)
    # the swap view's score is the average of the pair's own score and the swapped pair's
    np.testing.assert_allclose(s_ab, (plain_ab + 1 - plain_ba) / 2, atol=1e-6)


@pytest.mark.parametrize("k,mirror", [(1, False), (2, False), (0, True), (3, True)])
def test_dihedral_scores_turn_with_the_pair(nets, k: int, mirror: bool) -> None:
    a, b = _pair()

    def t(x):
        return np.rot90(np.fliplr(x) if mirror else x, k)

    s = _score(nets, a, b, "dihedral")
    s_turned = _score(nets, np.ascontiguousarray(t(a)), np.ascontiguousarray(t(b)), "dihedral")
    np.testing.assert_allclose(s_turned, t(s), atol=1e-5)
    # without the views the dense grid's anchor makes the scores depend on the orientation
    plain = _score(nets, a, b, "none")
    plain_turned = _score(nets, np.ascontiguousarray(t(a)), np.ascontiguousarray(t(b)), "none")
    assert np.abs(plain_turned - t(plain)).max() > 1e-4


def test_masked_scoring_keeps_the_mask(nets) -> None:
    a, b = _pair()
    mask = np.zeros(a.shape, bool)
    mask[10:30, 20:40] = True
    params = FusionParams(tta="all", working_min=0, boundary_mode="adaptive")
    s = score(nets.boundary, a, b, nets.patch_boundary, params, 4, mask=mask, device="cpu")
    assert np.isfinite(s[mask]).all() and np.isnan(s[~mask]).all()
    assert ((s[mask] >= 0) & (s[mask] <= 1)).all()


def test_default_and_paper_preset(tmp_path: Path) -> None:
    assert load_preset("paper")["fuse"]["tta"] == "none"
    with pytest.raises(Exception, match="tta"):
        FusionParams(tta="rotate")
