"""CIFAR-style ResNet of depth 6n+2 (He et al. 2016, section 4.2) with 2 input channels.

The same architecture serves the paper's initial net and its boundary net: the input is a
two-channel patch (gray A, gray B), the output two logits (class 1: the centre pixel is
focused in A).

The net is split into a fully convolutional ``trunk`` and a ``head`` (global average
pooling + linear layer) so that fusion can run the trunk once over a whole image and
replace the global pooling by a sliding-window average (see ``bafusion.fusion``).
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class ResNetSpec:
    """What defines the architecture; stored beside every model file."""

    depth: int = 56
    in_channels: int = 2
    num_classes: int = 2
    widths: tuple[int, int, int] = (16, 32, 64)
    #: Nets of this spec run side by side as one (:func:`ensemble`): ``members`` groups of
    #: channels that never mix, the logits their mean. 1: one net (the paper's).
    members: int = 1

    def __post_init__(self) -> None:
        if self.depth < 8 or (self.depth - 2) % 6 != 0:
            raise ValueError(f"ResNet depth must be 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, ...), got {self.depth}")
        if self.members < 1:
            raise ValueError(f"members must be >= 1, got {self.members}")

    @property
    def blocks_per_stage(self) -> int:
        return (self.depth - 2) // 6

    def to_dict(self) -> dict:
        d = asdict(self)
        d["widths"] = list(self.widths)
        d["arch"] = "cifar_resnet"
        if self.members == 1:  # a single net's description stays what it always was
            del d["members"]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ResNetSpec":
        """The spec a description (``to_dict``, a model's .json "arch") gives. Its fields are
        checked before anything is built (a hand-edited description built a net of 1.4 TB,
        or hung building 200000 blocks): integers (not floats, which were truncated, nor
        booleans), depth 6n+2 of at most :data:`MAX_DEPTH`, three positive widths of at most
        :data:`MAX_WIDTH`. A ValueError names the field ("arch.widths is [16, 32]: ...")."""
        if d.get("arch", "cifar_resnet") != "cifar_resnet":
            raise ValueError(f"unknown architecture {d.get('arch')!r}")
        if "depth" not in d:
            raise ValueError("no arch.depth entry")

        def whole(name: str, v: object, top: int) -> int:
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"arch.{name} is {v!r}: not an integer")
            if not 1 <= v <= top:
                raise ValueError(f"arch.{name} is {v!r}: must be between 1 and {top}")
            return v

        depth = d["depth"]
        if isinstance(depth, bool) or not isinstance(depth, int):
            raise ValueError(f"arch.depth is {depth!r}: not an integer")
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"arch.depth is {depth}: a ResNet depth is 6n+2 with n >= 1 (8, 14, 20, 32, 44, 56, ...)")
        if depth > MAX_DEPTH:
            raise ValueError(f"arch.depth is {depth}: at most {MAX_DEPTH} (ResNet-{MAX_DEPTH}, the deepest CIFAR ResNet)")
        widths = d.get("widths", [16, 32, 64])
        if (not isinstance(widths, (list, tuple)) or len(widths) != 3
                or any(isinstance(w, bool) or not isinstance(w, int) or w < 1 for w in widths)):
            raise ValueError(f"arch.widths is {widths!r}: must be 3 positive integers (the channels of the three "
                             "stages, e.g. [16, 32, 64])")
        if max(widths) > MAX_WIDTH:
            raise ValueError(f"arch.widths is {list(widths)!r}: each at most {MAX_WIDTH}")
        return cls(
            depth=depth,
            in_channels=whole("in_channels", d.get("in_channels", 2), MAX_WIDTH),
            num_classes=whole("num_classes", d.get("num_classes", 2), MAX_WIDTH),
            widths=(widths[0], widths[1], widths[2]),
            members=whole("members", d.get("members", 1), 64),
        )


#: Bounds of a model description's arch (:meth:`ResNetSpec.from_dict`): far above any net
#: bafusion trains (the paper's is ResNet-56 of widths 16/32/64), far below a net that would
#: not fit in memory.
MAX_DEPTH = 1202
MAX_WIDTH = 4096


def weights_arch(state: dict) -> dict | None:
    """depth, widths (of all members together), in_channels and num_classes as the weight
    shapes of a :class:`CifarResNet` state_dict give them; None when it is not laid out as one."""
    try:
        blocks = sorted(int(k.split(".")[1]) for k in state if re.fullmatch(r"trunk\.\d+\.conv1\.weight", k))
        if not blocks or len(blocks) % 3 or blocks != list(range(3, 3 + len(blocks))):
            return None
        n = len(blocks) // 3
        return {"depth": 6 * n + 2,
                "widths": [int(state[f"trunk.{3 + s * n}.conv2.weight"].shape[0]) for s in range(3)],
                "in_channels": int(state["trunk.0.weight"].shape[1]),
                "num_classes": int(state["fc.weight"].shape[0])}
    except (KeyError, AttributeError, IndexError, TypeError, ValueError):
        return None


#: The nets' parameters are float32 whatever the caller's default dtype: a notebook's
#: ``torch.set_default_dtype(torch.float64)`` made them float64, and fusion, which feeds float32
#: patches, failed in torch ("Input type (float) and bias type (double)"). Passed to each layer,
#: not set as the default for a while: the default is global to the process (other threads).
_F32 = torch.float32


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False, groups=groups, dtype=_F32)
        self.bn1: nn.Module = nn.BatchNorm2d(cout, dtype=_F32)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False, groups=groups, dtype=_F32)
        self.bn2: nn.Module = nn.BatchNorm2d(cout, dtype=_F32)
        self.shortcut: nn.Module
        if stride != 1 or cin != cout:
            # Option B of the ResNet paper (1x1 projection), the common CIFAR variant in torch.
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False, groups=groups, dtype=_F32),
                                          nn.BatchNorm2d(cout, dtype=_F32))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2): 3x3 conv, three stages of n blocks (16/32/64 channels, strides 1/2/2),
    global average pooling, linear classifier. Total stride of the trunk: 4. Float32 whatever
    torch's default dtype (``_F32``). ``init=False`` skips the random initialisation of the
    convolutions and BatchNorm layers (a net whose weights are loaded or only whose shapes are
    wanted: on the meta device, ``kaiming_normal_`` goes through torch's Python reference
    implementation, whose first call imports ``torch._dynamo``, about a second of every
    ``bafusion fuse``)."""

    stride = 4

    def __init__(self, spec: ResNetSpec, *, init: bool = True) -> None:
        super().__init__()
        self.spec = spec
        k = spec.members
        w1, w2, w3 = (w * k for w in spec.widths)
        n = spec.blocks_per_stage
        layers: list[nn.Module] = [
            nn.Conv2d(spec.in_channels, w1, 3, 1, 1, bias=False, dtype=_F32),  # every member sees the input
            nn.BatchNorm2d(w1, dtype=_F32),
            nn.ReLU(inplace=True),
        ]
        cin = w1
        for width, stride in ((w1, 1), (w2, 2), (w3, 2)):
            for i in range(n):
                layers.append(BasicBlock(cin, width, stride if i == 0 else 1, groups=k))
                cin = width
        self.trunk = nn.Sequential(*layers)
        self.fc = nn.Linear(w3, spec.num_classes, dtype=_F32)
        for m in self.modules() if init else ():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, context: int = 0) -> torch.Tensor:
        """Logits (B, classes) of patches ``x`` (B, C, p, p).

        ``context`` > 0 (a multiple of the stride, 4): ``x`` holds crops of side
        ``p + 2 * context`` around the patches, and the result is (2B, classes): first the
        logits of the isolated central patches (zero padding at their border, as in the
        paper), then the logits that the trunk run over the whole crop gives when only the
        central ``p/4 x p/4`` cells are pooled: the patch seen in its surroundings, which is
        what fusion's dense pass computes (see :func:`context_logits`). One call, so that
        DistributedDataParallel sees one forward per backward.
        """
        if not context:
            return self.fc(self.trunk(x).mean(dim=(2, 3)))
        iso = x[..., context:-context, context:-context]
        return torch.cat([self.forward(iso), context_logits(self, x, context)])


def context_logits(net: CifarResNet, x: torch.Tensor, context: int) -> torch.Tensor:
    """Logits of the central patches of crops ``x`` (B, C, p + 2 * context, ...): the trunk
    over the whole crop, the average over the central ``p/4 x p/4`` cells only, the linear
    layer. ``context`` must be a positive multiple of the trunk's stride (4)."""
    if context <= 0 or context % CifarResNet.stride:
        raise ValueError(f"context must be a positive multiple of {CifarResNet.stride}, got {context}")
    c = context // CifarResNet.stride
    f = net.trunk(x)
    if f.shape[-1] <= 2 * c or f.shape[-2] <= 2 * c:
        raise ValueError(f"crops of {tuple(x.shape[-2:])} leave no central patch with context {context}")
    return net.fc(f[..., c:-c, c:-c].mean(dim=(2, 3)))


def fold_batchnorm(net: CifarResNet) -> CifarResNet:
    """A copy of ``net`` for inference with every BatchNorm folded into the convolution before
    it (``w * g / sqrt(v + eps)``, bias ``b - m * g / sqrt(v + eps)``) and replaced by an
    identity: the same function in eval mode up to float rounding, 1.3-1.4x faster on CPU
    (measured on ResNet-56 patches). Not for training (the statistics are frozen in). A net
    folded already (the nets of a :class:`bafusion.fusion.FusionNets`) is copied as it is."""
    import copy

    out = copy.deepcopy(net).eval()

    def fold(conv: nn.Module, bn: nn.Module) -> None:
        if not isinstance(bn, nn.BatchNorm2d):  # folded already: an identity
            return
        with torch.no_grad():
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            bias = bn.bias - bn.running_mean * scale
            if conv.bias is not None:
                bias = bias + conv.bias * scale
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1))
            conv.bias = nn.Parameter(bias)

    trunk = out.trunk
    fold(trunk[0], trunk[1])
    trunk[1] = nn.Identity()
    for blk in trunk:
        if isinstance(blk, BasicBlock):
            fold(blk.conv1, blk.bn1)
            fold(blk.conv2, blk.bn2)
            blk.bn1, blk.bn2 = nn.Identity(), nn.Identity()
            if isinstance(blk.shortcut, nn.Sequential):
                fold(blk.shortcut[0], blk.shortcut[1])
                blk.shortcut[1] = nn.Identity()
    return out


def ensemble(nets: "list[CifarResNet] | tuple[CifarResNet, ...]") -> CifarResNet:
    """One net that runs ``nets`` (single nets of one spec) side by side and returns the mean
    of their logits, for patches and for the dense pass alike: the members' channels are
    stacked in groups (grouped convolutions: on a CPU they took 2.6x the time of one net for
    two members, BENCHMARKS.md), and the linear layer averages (its weights side by side,
    divided by the number of members).

    Raises
    ------
    ValueError
        Fewer than two nets, nets of different specs or already ensembles, or nets whose
        BatchNorm was folded (:func:`fold_batchnorm`; ensemble the trained nets, then fold).
    """
    from dataclasses import replace

    if len(nets) < 2:
        raise ValueError(f"an ensemble needs at least two nets, got {len(nets)}")
    spec = nets[0].spec
    if spec.members != 1 or any(n.spec != spec for n in nets):
        raise ValueError("ensemble members must be single nets of one architecture, got "
                         f"{[n.spec.to_dict() for n in nets]}")
    k = len(nets)
    out = CifarResNet(replace(spec, members=k))
    states = [n.state_dict() for n in nets]
    if any(set(st) != set(out.state_dict()) for st in states):
        raise ValueError("ensemble members must be nets as trained (with their BatchNorm layers), "
                         "not folded inference copies: ensemble first, then fold")
    merged: dict[str, torch.Tensor] = {}
    for key, ref in out.state_dict().items():
        parts = [st[key] for st in states]
        if key.endswith("num_batches_tracked"):
            merged[key] = parts[0].clone()
        elif key == "fc.weight":
            merged[key] = torch.cat(parts, dim=1) / k
        elif key == "fc.bias":
            merged[key] = torch.stack(parts).mean(dim=0)
        else:  # BatchNorm vectors, the first convolution (every member's filters), grouped convolutions
            merged[key] = torch.cat(parts, dim=0)
        if merged[key].shape != ref.shape:
            raise ValueError(f"{key}: members' weights {tuple(parts[0].shape)} do not stack to {tuple(ref.shape)}")
    out.load_state_dict(merged)
    return out.eval()


def build_model(depth: int = 56, in_channels: int = 2, num_classes: int = 2) -> CifarResNet:
    return CifarResNet(ResNetSpec(depth=depth, in_channels=in_channels, num_classes=num_classes))


# --------------------------------------------------------------------------------------
# Model files: ``<name>.pt`` holds a plain state_dict, ``<name>.json`` beside it the
# architecture (``ResNetSpec.to_dict()``) under "arch", the file format (``MODEL_FORMAT``)
# under "format", plus whatever else the trainer records (patch size, params, metrics) under
# other keys.
# --------------------------------------------------------------------------------------

#: The format of the model files :func:`save_model` writes, stored as the description's
#: integer "format" entry; raised when a change makes files that older code would misread
#: (``bafusion.__version__`` names a release of the whole package: most releases leave the
#: model files as they are, and an older release cannot know what a newer one changed).
#: A description without the entry (every model written before it existed, the shipped ones
#: among them) is format 1; :func:`read_model_meta` refuses a newer format than this.
MODEL_FORMAT = 1


#: The description's entry holding the SHA-256 (hex) of the .pt's bytes it was written with
#: (:func:`save_model`); :func:`load_model` refuses a .pt of another hash. A description without
#: it (written before 0.7.0, the shipped ones among them) is not checked.
WEIGHTS_SHA256 = "weights_sha256"


class ModelFileError(RuntimeError):
    """A model file is missing, unreadable, or of another architecture."""


#: Words of torch.save's RuntimeErrors that are the file system's, not a bug (its C++ writer
#: says "unexpected pos" or "iostream error" for a short write, a full disk).
_WRITE_FAILURES = ("inline_container", "strerror", "cannot be opened", "open file", "Parent directory",
                   "iostream error", "PytorchStreamWriter failed")


def torch_part_name(final: "str | os.PathLike[str]") -> str:
    """The temporary name (``atomic_file(name=)``) under which ``torch.save`` writes ``final``:
    ``<name>.part``. torch names the zip's root folder after the file name less its last suffix,
    and the model files and checkpoints have always been written so, with root ``<name>/``
    (``initial.pt/data.pkl``): the same bytes as before, whatever the temporary folder."""
    return os.path.basename(final) + ".part"


def save_torch(obj: object, tmp: "str | os.PathLike[str]", final: "str | os.PathLike[str]") -> None:
    """``torch.save(obj, tmp)``, where ``tmp`` is the temporary name of ``final``: a failure to
    write (disk full, permission denied, a read-only folder), a ``RuntimeError`` of torch's, is
    an ``OSError`` naming ``final`` (one line from the command)."""
    import errno
    import re
    import shutil
    from pathlib import Path

    try:
        torch.save(obj, tmp)
    except RuntimeError as e:
        msg = " ".join(str(e).split())
        if not any(w in msg for w in _WRITE_FAILURES):
            raise
        m = re.search(r"strerror:? ([A-Za-z][A-Za-z ]+)", msg)
        code = errno.EIO
        if m:
            why = m.group(1).strip()
            code = next((c for c in errno.errorcode if os.strerror(c) == why), errno.EIO)
        else:
            with contextlib.suppress(OSError):
                if shutil.disk_usage(Path(final).parent).free < 64 << 20:
                    code = errno.ENOSPC
            why = os.strerror(code) if code == errno.ENOSPC else f"could not be written ({msg[:200]}); is the disk full?"
        raise OSError(code, why, os.fspath(final)) from e


def save_model(net: CifarResNet, path: "str | os.PathLike[str]", meta: dict | None = None) -> None:
    """Write ``path`` (a .pt state_dict) and ``path`` with suffix .json, each atomically; the
    description records ``meta``, the architecture ("arch"), the file format ("format":
    :data:`MODEL_FORMAT`) and the SHA-256 of the .pt's bytes ("weights_sha256"). The .pt's
    bytes do not depend on ``meta``.

    The .json is renamed into place first, then the .pt: a run killed between the two leaves the
    new description beside the earlier weights, which :func:`load_model` refuses by the hash (the
    .pt renamed first left the new weights with the earlier description, unsaid when of the same
    architecture: its patch side or input scale used for other weights)."""
    import hashlib
    import json
    from pathlib import Path

    from bafusion.atomic import atomic_file, write_text

    p = Path(path)
    if p.with_suffix(".json") == p:  # the description would overwrite the weights
        from bafusion.errors import UserError

        raise UserError(f"{p}: a model file needs a suffix other than .json (its description is written as .json)")
    p.parent.mkdir(parents=True, exist_ok=True)
    info = dict(meta or {})
    info["arch"] = net.spec.to_dict()
    info["format"] = MODEL_FORMAT
    with atomic_file(p, name=torch_part_name(p)) as tmp:
        save_torch({k: v.detach().cpu() for k, v in net.state_dict().items()}, tmp, p)
        with open(tmp, "rb") as f:
            info[WEIGHTS_SHA256] = hashlib.file_digest(f, "sha256").hexdigest()
        write_text(p.with_suffix(".json"), json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")


def read_model_meta(path: "str | os.PathLike[str]") -> dict:
    """The description (``.json``) beside the model file ``path``, as a dict; one without a
    "format" entry (written before it existed) is format 1.

    Raises
    ------
    ModelFileError
        Naming the .json when it is missing, unreadable, no bafusion model description, or of
        a format newer than :data:`MODEL_FORMAT` (written by a newer bafusion).
    """
    from pathlib import Path

    from bafusion.errors import json_loads

    jp = Path(path).with_suffix(".json")
    if not jp.exists():
        raise ModelFileError(f"{jp}: missing model description (expected beside {Path(path).name})")
    try:
        meta = json_loads(jp.read_text(encoding="utf-8-sig"))
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{jp}: unreadable model description: {e}") from e
    if not isinstance(meta, dict) or "arch" not in meta:
        raise ModelFileError(f"{jp}: no 'arch' entry: not a bafusion model description")
    if not isinstance(meta["arch"], dict):
        raise ModelFileError(f"{jp}: 'arch' is {meta['arch']!r}, not a description of the net: not a bafusion "
                             "model description")
    fmt = meta.get("format", 1)
    if isinstance(fmt, bool) or not isinstance(fmt, int) or fmt < 1:
        raise ModelFileError(f"{jp}: 'format' is {fmt!r}, not a model file format (a positive integer): not a "
                             "bafusion model description")
    if fmt > MODEL_FORMAT:
        raise ModelFileError(f"{jp}: model file format {fmt}, written by a newer bafusion (this one reads format "
                             f"{MODEL_FORMAT} and older); upgrade bafusion to use it")
    return meta


#: Sentences of torch's weights-only refusal that are advice, not the problem: to retry with
#: ``weights_only=False`` or to allow the global (either runs whatever code the file holds),
#: to read torch's documentation, to file an issue with torch. Matched by subject, not by
#: torch's wording, which changes between versions (2.6's "WeightsUnpickler error:" prefix is
#: gone from 2.13's "unsupported GLOBAL" refusals).
_TORCH_ADVICE = re.compile(r"weights.?only|trust|arbitrary code|safe_globals|allowlist|file an issue|documentation|"
                           r"https?://|PyTorch \d", re.I)


def _load_problem(path: "os.PathLike[str]", e: BaseException) -> str:
    """The gist of why ``torch.load`` failed (for a refusal of ``weights_only=True``: what it
    refused, e.g. ``unsupported GLOBAL posix.system``), without torch's advice to retry with
    ``weights_only=False`` (unsafe: it runs the code a malicious file holds, and no cure for a
    damaged one). For the model loader and the training checkpoints alike."""
    text = str(e)
    if "weights only" in text.lower() or "weights_only" in text or "weightsunpickler" in text.lower():
        text = re.sub(r"WeightsUnpickler error:", "\n", text)
        kept = [s for s in re.split(r"(?<=[.:!?])\s+|\n+", text) if s.strip() and not _TORCH_ADVICE.search(s)]
        detail = "not a plain tensor file: " + (" ".join(kept) or "torch's weights-only loader refused it")
    elif isinstance(e, EOFError) or not text.strip():
        detail = "the file is empty" if os.path.getsize(path) == 0 else "unexpected end of file"
    else:
        detail = f"{type(e).__name__}: {text.strip().splitlines()[0].split('. ')[0]}"
    return " ".join(detail.split())[:200]


def _check_weights_fit(spec: ResNetSpec, state: dict, p: "os.PathLike[str]") -> None:
    """Refuse, naming the .json's field, an arch that does not fit the weights in ``p``:
    compared with the shapes the weights give (:func:`weights_arch`) and, shape by shape, with
    a net of ``spec`` built on the meta device (no memory), before the net itself is built."""
    from pathlib import Path

    p = Path(p)
    jp = p.with_suffix(".json")
    got = weights_arch(state)
    if got is not None:
        described = spec.to_dict()
        described["widths"] = [w * spec.members for w in spec.widths]
        for field in ("depth", "widths", "in_channels", "num_classes"):
            if described[field] != got[field]:
                shown = spec.to_dict()[field]
                raise ModelFileError(f"{jp}: arch.{field} {shown} does not match the weights in {p}, which are of "
                                     f"{field} {got[field]}: restore the description written with them")
    with torch.device("meta"):  # shapes only: no initialisation (on meta it imports torch._dynamo, ~1 s)
        probe = CifarResNet(spec, init=False)
    want = {k: tuple(v.shape) for k, v in probe.state_dict().items()}
    for k, shape in want.items():
        v = state.get(k)
        have = tuple(v.shape) if isinstance(v, torch.Tensor) else None
        if have != shape:
            raise ModelFileError(f"{jp}: the architecture it describes ({spec.to_dict()}) does not match the weights "
                                 f"in {p}: {k} is {have if have is not None else 'missing'} there, {shape} in the "
                                 "description")


def _check_weights_hash(meta: dict, p: "os.PathLike[str]") -> None:
    """Refuse weights in ``p`` whose SHA-256 is not the one their description records
    (:data:`WEIGHTS_SHA256`): a :func:`save_model` killed between its two renames, or one of the
    pair replaced. Not checked for a description without it."""
    import hashlib
    from pathlib import Path

    want = meta.get(WEIGHTS_SHA256)
    if want is None:
        return
    jp = Path(p).with_suffix(".json")
    if not isinstance(want, str) or not re.fullmatch(r"[0-9a-f]{64}", want):
        raise ModelFileError(f"{jp}: '{WEIGHTS_SHA256}' is {want!r}, not a SHA-256 (64 hex digits): not a bafusion "
                             "model description")
    with open(p, "rb") as f:
        got = hashlib.file_digest(f, "sha256").hexdigest()
    if got != want:
        raise ModelFileError(f"{jp}: describes other weights than those in {Path(p).name} (its {WEIGHTS_SHA256} "
                             f"{want[:12]}..., the file's {got[:12]}...): a save interrupted between the two files, "
                             "or one of them replaced; restore the pair written together, or train again")


def load_model(
    path: "str | os.PathLike[str]", expect: ResNetSpec | None = None, map_location: str | torch.device = "cpu"
) -> tuple[CifarResNet, dict]:
    """Load a model saved by :func:`save_model` with ``weights_only=True``.

    Raises :class:`ModelFileError` naming the file when it is missing, unreadable, of an
    unknown architecture, of another architecture than ``expect``, when its weights do
    not fit the architecture its description names, or when any of them is NaN or infinite
    (a diverged training: its logits are NaN, and fusion took one source everywhere), or when
    its description records the hash of other weights (:data:`WEIGHTS_SHA256`: a save killed
    between its two files).
    """
    from pathlib import Path

    p = Path(path)
    if not p.exists():
        raise ModelFileError(f"{p}: model file not found")
    meta = read_model_meta(p)
    jp = p.with_suffix(".json")
    try:
        spec = ResNetSpec.from_dict(meta["arch"])
    except ValueError as e:
        if str(e).startswith(("arch.", "no arch.")):
            raise ModelFileError(f"{jp}: {e}") from e
        raise ModelFileError(f"{p}: unsupported architecture {meta.get('arch')!r}: {e}") from e
    except (KeyError, TypeError, AttributeError) as e:
        raise ModelFileError(f"{p}: unsupported architecture {meta.get('arch')!r}: {e}") from e
    if expect is not None and spec != expect:
        raise ModelFileError(f"{p}: architecture {spec.to_dict()} does not match the expected {expect.to_dict()}")
    try:
        # torch's warnings about the file's pickle protocol (raised in torch, or at this line):
        # not catch_warnings, whose "ignore" leaked from a load beside another thread's block
        # and silenced every warning of the process after it; nor other modules' warnings,
        # another thread's fusion notes meanwhile
        from bafusion.threads import quiet_warnings

        with quiet_warnings({"module": r"(torch|bafusion\.nets\.model)(\.|$)"}):
            state = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for bad files
        raise ModelFileError(
            f"{p}: unreadable model file, damaged, truncated or not written by bafusion "
            f"({_load_problem(p, e)}); replace it with a good copy"
        ) from e
    if not isinstance(state, dict):
        raise ModelFileError(f"{p}: not a bafusion model file (holds a {type(state).__name__}, not a state_dict)")
    bad = [k for k, v in state.items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:  # a diverged training: the net would decide every pixel alike (NaN logits)
        raise ModelFileError(f"{p}: {len(bad)} of {len(state)} weight tensors hold NaN or infinite values "
                             f"(first: {bad[0]}): a diverged training; train it again (a lower train.lr)")
    _check_weights_fit(spec, state, p)
    _check_weights_hash(meta, p)
    # Every weight and buffer comes from the file (a strict load; the net has no buffer that its
    # state_dict leaves out): built on the meta device, the net draws nothing from torch's global
    # generator (a CPU build moved the caller's seeded draws), and its memory, allocated where a
    # plain build puts it (torch's default device), is filled by the load. Not a forked
    # generator: its saved state, put back, rewound the draws of the caller's other threads.
    with torch.device("meta"):
        net = CifarResNet(spec, init=False)
    net.to_empty(device=torch.empty(0).device)
    try:
        net.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as e:
        raise ModelFileError(f"{p}: weights do not fit the architecture {spec.to_dict()}: {str(e)[:500]}") from e
    net.eval()
    return net, meta
