"""Objective evaluation: the paper's Table 1 and Fig. 4 on the embedded test set, Lytro, classic
and real (MFIFB) pairs.

For every configured dataset and every method, every pair is scored with the objective fusion
metrics of :mod:`bafusion.evaluation.metrics` (default QMI, QG, QY, QCB; QP is slow and optional). Methods:

* ``Ours``: the boundary-aware fusion (:func:`bafusion.fusion.fuse_images`, refinement on);
* ``Ours-initial``: the same without boundary refinement (the initial net's map, then the same
  small-region removal). It is derived from the same run's initial scores, so both variants
  share the initial net's pass and differ only by the boundary net;
* ``GFF-native`` and ``Laplacian``: the native baselines of :mod:`bafusion.evaluation.baselines`,
  computed on the fly and rounded to uint8 as if stored;
* folder baselines (NSCT, SR, NSCT-SR, GFF, DSIFT, CNN by default): published fused images read
  from ``<reference>/<METHOD>/<pair>.<ext>`` when a dataset has a ``reference`` root;
* peers known only by their metric values: rows of a dataset's ``reference_metrics`` CSV
  (columns ``pair,method`` and one per metric, e.g. ``QMI,QG,QY,QCB``). They enter the per-pair
  rows, means, wins and ranks like every other method, for the metrics the CSV has (others are
  NaN, ``n/a``). ``reference_methods`` selects and orders the peers (default with a CSV: every
  method of the CSV, after the six folder baselines when there is also a ``reference`` root); a
  method of the CSV is taken from the CSV, any other from the ``reference`` folder.

Per dataset, ``evaluate.datasets`` entries take ``name``, ``sources`` and optionally
``reference``, ``reference_methods``, ``reference_metrics``, ``jpeg_quality``,
``reference_jpeg_quality``, ``sets``, ``pattern``, ``pairs``, ``figure_pair``, ``crop``.
Like-for-like storage, ``jpeg_quality``: one
quality (1-100) for every pair, or ``{pair-name prefix: quality}`` (the longest matching prefix
counts; pairs matched by none are measured as computed). The output of every method computed
here (ours and the native baselines) is then re-encoded as JPEG in memory with Pillow at that
quality, chroma subsampling 4:2:0, decoded, and *that* image is measured (all metrics, truth
values too): Table 1, the means, wins, ranks and ``metrics.json`` are like for like with peers
whose published files are lossy JPEG. Methods read from a ``reference`` folder are measured as
stored, not re-encoded: where those files are lossless (PNG, TIFF, BMP, GIF, lossless WebP, ...: :func:`stored_lossless`) the comparison is not
like for like, and a warning and the header of table1.md say so (:func:`lossless_references`). The values of the output as computed are kept in the
``lossless_<metric>`` columns of metrics.csv / means.csv, in a *Lossless output* section of
table1.md and under ``lossless`` in metrics.json; the header of table1.md says which qualities
were applied. ``reference_jpeg_quality``: the quality at which the reference methods' files are
stored, as known or estimated (``{method or "*": quality or {prefix: quality}}``; ``*`` for every
method not named); it changes no value. With either key, Table 1, the per-set tables and the
ablation have a *Scored as* column saying how each row's images were stored when measured
(:func:`storage_labels`), Table 1 and the per-set tables show the output of the methods computed
here (ours, native baselines) before re-encoding in italics beside the ranked rows (no wins, bold
or rank: :data:`ASIDE_NOTE`), and the header names
the peers stored at a higher or a lower quality than ours. ``sets``: pair-name prefixes (e.g. ``[savic, tsai, stand]``); table1.md then has
our rank per metric on each set and on all pairs, and Table 1 per set; ``means-sets.csv`` the
means per set. Our rank (also without ``sets``): the competition rank of the mean among the
methods of Table 1 ("2nd of 31": one method has a strictly better mean), ``Ours-initial``
ranked in place of ``Ours``.

The ``real`` dataset (41 pairs of MFIFB's savic, tsai and stand sets in ``../shared/data``,
against the published values of 30 methods) is configured in ``benchmarks/eval_real.yaml`` and
as a commented example in ``params.yaml``; most of its peers' files are JPEG at quality ~75
(savic, tsai) and ~92 (stand), hence ``jpeg_quality: {savic: 75, tsai: 75, stand: 92}``; DPRL's
are ~95 and ECNN's, IFCNN's and SFMD's ~75 on every pair (its ``reference_jpeg_quality``). It is a
development set for choosing configurations; never train on it.

On pairs with an all-in-focus truth (``<pair>-truth.<ext>``, the embedded set), PSNR and SSIM of
each fused image against it (``skimage.metrics``, data range 255, colour SSIM over channels; a
fused image equal to the truth has PSNR ``inf``, written so in the tables and CSVs, the best value
and a win, and ``null`` in ``metrics.json``, which JSON numbers cannot hold; in a method's mean it
counts as 100 dB, :data:`INF_PSNR_IN_MEANS`, so one perfect pair does not make the mean ``inf``);
with a true decision map (``<pair>-dm.<ext>``, 255 = A focused) the decision-map accuracy of
our two variants.

Outputs, under ``--out`` (``data/evaluation``), written into a temporary folder that replaces the
old one only when everything succeeded:

* ``<dataset>/metrics.csv``: one row per (pair, method), all values (with ``jpeg_quality``:
  also the ``jpeg_quality`` applied and the ``lossless_*`` values);
* ``<dataset>/means.csv``: mean per method and metric; ``means-sets.csv`` per set, with ``sets``;
* ``<dataset>/table1.md``: Table 1 (see :func:`table_markdown`), our ranks, per-set tables
  (:func:`table1_document`);
* ``<dataset>/figures/``: Fig. 4 and the difference maps (:mod:`bafusion.evaluation.figures`; methods
  with images only, of our output as computed);
* ``<dataset>/fused/<method>/<pair>.png`` for the methods computed here, when ``save_fused``
  (and ``<pair>.jpg``, the re-encoded image that was measured, with ``jpeg_quality``);
* ``metrics.json``: our two variants' means per dataset, and their win counts (``Ours``: among
  the methods of Table 1; ``Ours-initial``: among all methods, as in the ablation table), their
  ranks (``rank`` out of ``rank_of``), per-set means and ranks (``sets``) and ``lossless`` means;
  and under ``provenance`` what made the output: bafusion's version, the model as given, the nets
  of ``Ours`` (file as given, sha256 of the file, patch side) and the fusion parameters (all, and
  those that differ from the defaults), which each ``table1.md`` says in a line under its title.
  The DVC metrics file (``--report``) is this file without ``provenance``: numbers only.

Win counting (Table 1's parenthesised numbers): on a pair, a method *wins* a metric when its
value is strictly better than the value of every other method in the table that has a finite
value on that pair (higher is better, lower for QCV). A tie for the best value gives nobody the
win, so the win counts of a column add up to at most the number of pairs. NaN values never win
and are left out of the means (a mean over no finite value is NaN, shown as ``n/a``). Bold marks
the best mean of a column; equal best means are all bold. A method alone in its table has no
bold and no wins: there is no one to beat.

Undefined values (NaN, e.g. QCB or QCV of a flat output): a method's mean is over the pairs where
its value is defined. Where that is fewer than the table's pairs, but not none, the cell says so,
``0.7012 (n=19/20) (3)``, with a note under the table; such a mean is never bold when another
method's mean is over more pairs, and it ranks behind every mean over the most pairs (among
themselves, partial means rank by value): leaving out exactly the pairs where its output was
degenerate cannot make a method best. ``means.csv`` and ``means-sets.csv`` then have an
``n_<metric>`` column (pairs with a value, per method) for such metrics, and ``metrics.json`` an
``n_defined`` entry beside our variants' means. A peer's value is never NaN on some pairs only:
a blank cell of a ``reference_metrics`` CSV is refused before any work unless the method's cells
of that metric are blank on every pair (then it is ``n/a``, as a metric the CSV lacks).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from bafusion.atomic import atomic_dir, atomic_file, write_text
from bafusion.errors import InputFileError, UserError, is_out_of_memory
from bafusion.preflight import EVALUATE_PROVENANCE
from bafusion.schema import default, defaults, validate_section

__all__ = [
    "OURS",
    "OURS_INITIAL",
    "NATIVE_METHODS",
    "REFERENCE_METHODS",
    "LOWER_IS_BETTER",
    "metric_directions",
    "Pair",
    "Dataset",
    "EvalConfig",
    "parse_config",
    "find_pairs",
    "count_wins",
    "mean_values",
    "defined_counts",
    "partial_mark",
    "PARTIAL_NOTE",
    "TRUTH_PARTIAL_NOTE",
    "best_methods",
    "table_markdown",
    "truth_metrics",
    "evaluate_pair",
    "evaluate_dataset",
    "run_evaluation",
    "evaluation_provenance",
    "check_dataset",
    "check_datasets",
    "source_notes",
    "LOSSLESS",
    "PeerMetrics",
    "read_peer_metrics",
    "jpeg_reencode",
    "set_rows",
    "rank_of",
    "ordinal",
    "dataset_notes",
    "storage_labels",
    "ASIDE_NOTE",
    "LOSSLESS_SUFFIXES",
    "lossless_references",
    "stored_lossless",
    "CAPPED_MARK",
    "capped_note",
    "INF_COUNT_PREFIX",
    "CAPPED_TAG",
    "MetricError",
]

OURS = "Ours"
OURS_INITIAL = "Ours-initial"
NATIVE_METHODS: tuple[str, ...] = ("GFF-native", "Laplacian")
"""Baselines computed on the fly (``bafusion.evaluation.baselines``)."""
REFERENCE_METHODS: tuple[str, ...] = ("NSCT", "SR", "NSCT-SR", "GFF", "DSIFT", "CNN")
"""The paper's six baselines, read from a dataset's reference root."""
DEFAULT_METHODS: tuple[str, ...] = tuple(default("evaluate.methods"))
"""The schema's default ``evaluate.methods`` (Ours-initial, Ours and the native baselines)."""
DEFAULT_METRICS: tuple[str, ...] = tuple(default("evaluate.metrics"))
TRUTH_METRICS: tuple[str, ...] = ("PSNR", "SSIM", "DM_acc")
"""Values against the all-in-focus truth / the true decision map (where the dataset has them)."""
LOWER_IS_BETTER: frozenset[str] = frozenset({"QCV"})
"""Metrics for which a smaller value is better; all others: larger is better."""
LOSSLESS = "lossless_"
"""Column prefix of the values of a computed method's output before JPEG re-encoding
(``jpeg_quality``): ``lossless_QMI`` etc."""


# --------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pair:
    """One source pair and, where the dataset has them, its truth and true decision map."""

    name: str
    a: Path
    b: Path
    truth: Path | None = None
    dm: Path | None = None


@dataclass(frozen=True)
class Dataset:
    """A dataset as configured in ``evaluate.datasets``."""

    name: str
    sources: Path
    reference: Path | None = None
    reference_methods: tuple[str, ...] = REFERENCE_METHODS
    pattern: str = default("evaluate.datasets.pattern")
    pairs: tuple[str, ...] = tuple(default("evaluate.datasets.pairs"))
    figure_pair: str = default("evaluate.datasets.figure_pair")
    crop: tuple[int, int, int] | None = None  # top, left, side (pixels); None: chosen automatically
    #: CSV ``pair,method,<metric>...`` of peers known only by their metric values.
    reference_metrics: Path | None = None
    #: (pair-name prefix, JPEG quality): our output is measured after re-encoding at that quality.
    jpeg_quality: tuple[tuple[str, int], ...] = ()
    #: (reference method or ``*``, ((pair-name prefix, JPEG quality), ...)): the quality at which a
    #: reference method's published files are stored, as known or estimated (said in the tables'
    #: *Scored as* column; the values are not changed).
    reference_jpeg_quality: tuple[tuple[str, tuple[tuple[str, int], ...]], ...] = ()
    #: Pair-name prefixes of sub-sets with their own tables (means, wins, our ranks).
    sets: tuple[str, ...] = tuple(default("evaluate.datasets.sets"))

    def quality_for(self, pair: str) -> int | None:
        """The JPEG quality at which this pair's computed outputs are measured (the longest
        matching prefix of ``jpeg_quality``), or None: measured as computed (lossless)."""
        return _longest_prefix(self.jpeg_quality, pair)

    def reference_quality_for(self, method: str, pair: str) -> int | None:
        """The JPEG quality of reference method ``method``'s published file of ``pair`` as
        ``reference_jpeg_quality`` states it (the method's entry, else ``*``'s; the longest
        matching prefix), or None: not stated."""
        table = dict(self.reference_jpeg_quality)
        items = table.get(method, table.get("*"))
        return None if items is None else _longest_prefix(items, pair)

    def has_peers(self) -> bool:
        """Whether the table has peers (a reference folder or a reference metrics CSV)."""
        return self.reference is not None or self.reference_metrics is not None


def _longest_prefix(items: Sequence[tuple[str, int]], pair: str) -> int | None:
    """The quality of the longest prefix of ``items`` that ``pair`` starts with, or None."""
    best: tuple[int, int] | None = None
    for prefix, q in items:
        if pair.startswith(prefix) and (best is None or len(prefix) > best[0]):
            best = (len(prefix), q)
    return None if best is None else best[1]


@dataclass(frozen=True)
class EvalConfig:
    """The ``evaluate`` section of ``params.yaml``: defaults, types and allowed values are the
    parameter schema's, checked at construction; build one with :meth:`from_params` or
    :func:`parse_config`, which also check what involves several keys or files."""

    datasets: tuple[Dataset, ...]
    methods: tuple[str, ...] = DEFAULT_METHODS
    metrics: tuple[str, ...] = DEFAULT_METRICS
    alpha: float = default("evaluate.alpha")
    save_fused: bool = default("evaluate.save_fused")
    figures: bool = default("evaluate.figures")

    def __post_init__(self) -> None:
        validate_section("evaluate", {k: getattr(self, k) for k in ("methods", "metrics", "alpha", "save_fused", "figures")},
                         "EvalConfig")

    @classmethod
    def from_params(cls, params: Mapping[str, Any], root: Path = Path("."), source: str = "parameters") -> EvalConfig:
        """The :class:`EvalConfig` of a whole parameter mapping (its ``evaluate`` section):
        :func:`parse_config`."""
        return parse_config(params.get("evaluate"), root, source)


def _resolve(path: str | os.PathLike[str], root: Path) -> Path:
    from bafusion.workspace import resolve

    return resolve(path, root)  # ../shared/... from a DVC experiment's copy: the workspace's


def parse_config(section: Mapping[str, Any] | None, root: Path = Path("."), source: str = "parameters") -> EvalConfig:
    """Validate the ``evaluate`` section (a mapping) into an :class:`EvalConfig`.

    Keys, types and allowed values are checked against the parameter schema (metric names
    are first stripped and upper-cased, and repeats dropped); absent keys (and an empty
    ``datasets``, ``methods`` or ``metrics``) take the schema's defaults: without ``datasets``
    the embedded test set ``data/testset`` is evaluated. Relative dataset paths are taken
    relative to ``root`` (the repository root). Checked here, as the schema cannot say them:
    dataset names are distinct; a dataset's reference methods are distinct, do not take the
    name of a method computed here, and (without a ``reference`` folder) are in its
    ``reference_metrics`` CSV.

    Raises
    ------
    bafusion.schema.ParamsError, UserError
        One line naming the setting (``source: evaluate.metrics[1]: 'QZ' is not one of ...``).
    """
    sec = dict(section or {})
    if isinstance(sec.get("metrics"), (list, tuple)):
        sec["metrics"] = list(dict.fromkeys(str(m).strip().upper() for m in sec["metrics"]))
    validate_section("evaluate", sec, source)
    base, per_set = defaults("evaluate"), defaults("evaluate.datasets")
    datasets = []
    seen: set[str] = set()
    for i, given in enumerate(sec.get("datasets") or base["datasets"]):
        d = {**per_set, **given}
        name = str(d["name"])
        if name in seen:
            raise UserError(f"evaluate.datasets[{i}]: dataset name {name!r} is repeated")
        if name == EVALUATE_PROVENANCE:  # metrics.json's key beside the datasets' (what made the output)
            raise UserError(f"evaluate.datasets[{i}]: dataset name {name!r} is taken (metrics.json records under it "
                            "what made the output): name the dataset otherwise")
        seen.add(name)
        crop = tuple(int(v) for v in d["crop"]) if d.get("crop") else None
        ref = d.get("reference")
        ref_metrics = _resolve(d["reference_metrics"], root) if d.get("reference_metrics") else None
        peers = read_peer_metrics(ref_metrics) if ref_metrics is not None else None
        if d.get("reference_methods"):
            ref_methods = tuple(str(m) for m in d["reference_methods"])
        elif peers is not None:
            # default: the six folder baselines when there is a folder, then every CSV method
            ref_methods = tuple(dict.fromkeys([*(REFERENCE_METHODS if ref else ()), *peers.methods]))
        else:
            ref_methods = REFERENCE_METHODS
        if len(set(ref_methods)) != len(ref_methods):
            raise UserError(f"evaluate.datasets[{i}].reference_methods: repeated method in {list(ref_methods)}")
        clash = [m for m in ref_methods if m in (OURS, OURS_INITIAL, *NATIVE_METHODS)]
        if clash:
            raise UserError(f"evaluate.datasets[{i}]: reference method(s) {clash} have the name of a method computed here")
        ref_quality = tuple(sorted((str(m), _parse_quality(q)) for m, q in (d.get("reference_jpeg_quality") or {}).items()))
        # a method it names must be one the dataset can compare (a typo would say nothing); one
        # left out of a narrowed reference_methods is fine (the file states the whole CSV's)
        known = {*ref_methods, *(peers.methods if peers is not None else ())}
        ref_dir = _resolve(ref, root) if ref else None
        if ref_dir is not None and ref_dir.is_dir():
            known |= {f.name for f in ref_dir.iterdir() if f.is_dir()}
        unknown = [m for m, _ in ref_quality if m != "*" and m not in known]
        if unknown:
            raise UserError(f"evaluate.datasets[{i}].reference_jpeg_quality: {unknown} not among the dataset's "
                            f"reference methods {list(ref_methods)} (use '*' for every method not named)")
        if not ref:
            unknown = [m for m in ref_methods if peers is not None and m not in peers.methods]
            if unknown:
                raise UserError(
                    f"evaluate.datasets[{i}].reference_methods: {unknown} not in {ref_metrics} "
                    "and the dataset has no 'reference' folder to read their images from"
                )
        datasets.append(
            Dataset(
                name=name,
                sources=_resolve(d["sources"], root),
                reference=_resolve(ref, root) if ref else None,
                reference_methods=ref_methods,
                pattern=str(d["pattern"] or per_set["pattern"]),
                pairs=tuple(str(p) for p in d["pairs"]),
                figure_pair=str(d["figure_pair"]),
                crop=crop,  # type: ignore[arg-type]
                reference_metrics=ref_metrics,
                jpeg_quality=_parse_quality(d.get("jpeg_quality")),
                reference_jpeg_quality=ref_quality,
                sets=tuple(d["sets"]),
            )
        )
    return EvalConfig(
        datasets=tuple(datasets),
        methods=tuple(sec.get("methods") or base["methods"]),
        metrics=tuple(sec.get("metrics") or base["metrics"]),
        alpha=float(sec.get("alpha", base["alpha"])),
        save_fused=bool(sec.get("save_fused", base["save_fused"])),
        figures=bool(sec.get("figures", base["figures"])),
    )


def _parse_quality(v: Any) -> tuple[tuple[str, int], ...]:
    """``jpeg_quality`` (checked by the schema): one quality for every pair, or
    {pair-name prefix: quality}, as sorted (prefix, quality) items."""
    if not v:
        return ()
    items = v.items() if isinstance(v, Mapping) else [("", v)]
    return tuple(sorted((str(prefix), int(q)) for prefix, q in items))


@dataclass(frozen=True)
class PeerMetrics:
    """Metric values of peers known only by numbers (a dataset's ``reference_metrics`` CSV)."""

    path: Path
    methods: tuple[str, ...]  # in order of first appearance
    metrics: tuple[str, ...]  # the CSV's metric columns
    values: Mapping[tuple[str, str], Mapping[str, float]]  # (pair, method) -> {metric: value}
    lines: Mapping[tuple[str, str], int] = field(default_factory=dict)  # (pair, method) -> CSV line
    columns: Mapping[str, str] = field(default_factory=dict)  # metric -> its column name in the CSV


_PEER_CACHE: dict[tuple[str, int, int], PeerMetrics] = {}


def read_peer_metrics(path: str | os.PathLike[str]) -> PeerMetrics:
    """Read a CSV with columns ``pair``, ``method`` and one column per metric (names as in
    :data:`bafusion.evaluation.metrics.METRICS`; other columns are ignored; empty cells are NaN,
    which :func:`evaluate_dataset` accepts only for a method blank on every pair of its table). A
    (pair, method) given twice, an infinite value and a value outside the metric's documented
    range (:data:`~bafusion.evaluation.metrics.VALUE_RANGES`) are errors naming line and column."""
    from bafusion.evaluation.metrics import METRICS

    p = Path(path)
    if not p.is_file():
        raise InputFileError(p, "reference metrics CSV not found")
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime_ns, st.st_size)
    if key in _PEER_CACHE:
        return _PEER_CACHE[key]
    try:
        with open(p, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            fields = [f.strip() for f in (reader.fieldnames or [])]
            if "pair" not in fields or "method" not in fields:
                raise InputFileError(p, f"expected columns pair, method and metrics; got {fields}")
            metric_cols = [f for f in fields if f.upper() in METRICS]
            if not metric_cols:
                raise InputFileError(p, f"no metric column (known: {', '.join(METRICS)}); got {fields}")
            values: dict[tuple[str, str], dict[str, float]] = {}
            lines: dict[tuple[str, str], int] = {}
            methods: dict[str, None] = {}
            for n, r in enumerate(reader, start=2):
                r = {(k or "").strip(): v for k, v in r.items()}
                k = (str(r["pair"]).strip(), str(r["method"]).strip())
                if not k[0] or not k[1]:
                    raise InputFileError(p, f"line {n}: empty pair or method")
                if k in values:
                    raise InputFileError(p, f"line {n}: pair {k[0]!r}, method {k[1]!r} given twice")
                try:
                    values[k] = {c.upper(): float(r[c]) if (r.get(c) or "").strip() else float("nan") for c in metric_cols}
                except ValueError as e:
                    raise InputFileError(p, f"line {n}: not a number: {e}") from None
                for c in metric_cols:
                    _check_peer_value(p, n, c, values[k][c.upper()], (r.get(c) or "").strip())
                lines[k] = n
                methods.setdefault(k[1])
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputFileError(p, f"unreadable CSV: {e}") from e
    pm = PeerMetrics(p, tuple(methods), tuple(c.upper() for c in metric_cols), values, lines,
                     {c.upper(): c for c in metric_cols})
    _PEER_CACHE[key] = pm
    return pm


def _check_peer_value(path: Path, line: int, column: str, v: float, text: str) -> None:
    """Refuse an infinite value (not finite: NaN, like a blank cell, is no value) and one outside
    the metric's documented range (:data:`~bafusion.evaluation.metrics.VALUE_RANGES`: a column
    in percent or shifted by one would make its peer best), naming the line and column."""
    from bafusion.evaluation.metrics import VALUE_RANGES

    if math.isinf(v):
        raise InputFileError(path, f"line {line}, column {column}: {text!r} is not finite (a metric value is a finite "
                                   "number; a blank cell is no value)")
    lo, hi = VALUE_RANGES[column.upper()]
    if not math.isnan(v) and not lo <= v <= hi:
        span = (f"at most {hi:g}" if math.isinf(lo) else f"at least {lo:g}" if math.isinf(hi) else f"{lo:g} to {hi:g}")
        raise InputFileError(path, f"line {line}, column {column}: {text} is outside the range of {column.upper()} "
                                   f"({span}): a value in percent, or a column shifted?")


def jpeg_reencode(img: np.ndarray, quality: int) -> tuple[np.ndarray, bytes]:
    """``img`` (uint8 gray or RGB) saved as JPEG in memory with Pillow at ``quality``, chroma
    subsampling 4:2:0 (as the peers' published files), and decoded again: (pixels, JPEG bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(img, dtype=np.uint8)).save(buf, format="JPEG", quality=int(quality), subsampling="4:2:0")
    data = buf.getvalue()
    with Image.open(io.BytesIO(data), formats=("JPEG",)) as im:  # only the JPEG reader (io.pillow_open's rule)
        im.load()
        out = np.asarray(im)
    return out, data


def _image_files(folder: Path) -> dict[str, list[Path]]:
    """The images of ``folder`` by file-name stem, by ``fuse-dir``'s rules
    (:func:`bafusion.fusion.batch.find_groups`): a suffix of the photo formats it takes
    (:func:`bafusion.io.read_suffixes`) in either case (``.Jpg``); dot-files (macOS
    ``._p1-A.jpg`` resource forks, editors' temporaries) are no images, nor are folders. Only
    PNG, JPEG, TIFF and BMP were taken: a pair of WebP (GIF, ``.jfif``, ...) shots, which
    ``fuse`` and ``fuse-dir`` read, was no pair, and one with such a B was refused as "source B
    missing". A named pipe, a device, a socket or a broken link so named is kept, for
    :func:`find_pairs` to refuse naming it (:func:`_not_regular`): left out, it made its pair's
    "source A missing", naming no file."""
    from bafusion.io import read_suffixes

    suffixes = read_suffixes()
    files: dict[str, list[Path]] = {}
    for p in sorted(folder.iterdir()):
        if not p.name.startswith(".") and p.suffix.lower() in suffixes and not p.is_dir():
            files.setdefault(p.stem, []).append(p)
    return files


def _not_regular(p: Path) -> str | None:
    """Why ``p`` (an entry of :func:`_image_files`) is no file to read: a broken link (naming
    its target) or not a regular file (a named pipe, a device, a socket); None for a file
    (:func:`bafusion.io.formats._not_regular`, which the reference results are named by too)."""
    from bafusion.io.formats import _not_regular as why

    return why(p)


def _find_file(files: Mapping[str, Sequence[Path]], stems: Sequence[str], folder: Path, what: str) -> Path | None:
    """The one image of ``files`` (:func:`_image_files`) whose stem is one of ``stems``, or None;
    two (``p1-A.jpg`` and ``p1-a.png``) are an :class:`InputFileError` naming both (``what``:
    the pair and the file's role)."""
    found = [f for stem in dict.fromkeys(stems) for f in files.get(stem, ())]
    if len(found) > 1:
        raise InputFileError(folder, f"{what}: {len(found)} files, {', '.join(f.name for f in found)}: "
                                     "keep one (rename or remove the others)")
    return found[0] if found else None


def _unread_hint(folder: Path, stems: Sequence[str]) -> str:
    """What a pair's missing source says of a file of ``folder`` named like it (a stem of
    ``stems``) in a format not read (a camera RAW ``p1-B.dng``, an ``.xcf``): the file and what to
    do, so that "source B missing" does not stand beside the file; "" when there is none."""
    from bafusion.io import unread_advice, unread_format

    others = sorted(p for p in folder.iterdir() if not p.name.startswith(".") and p.stem in stems and p.is_file())
    if not others:
        return ""
    names = ", ".join(p.name for p in others)
    kinds = [k for k in map(unread_format, others) if k]
    if len(kinds) == len(others):
        return f" ({names}: {' and '.join(dict.fromkeys(kinds))}, which bafusion does not read: " \
               f"{unread_advice(kinds, them=len(others) > 1)})"
    return f" ({names} is there, of a format not read: give it as PNG, JPEG, TIFF or another format fuse-dir takes)"


def find_pairs(ds: Dataset) -> list[Pair]:
    """The pairs of a dataset: the names in ``<sources>/index.json`` when present (the embedded
    test set), else every ``<pair>`` matching ``pattern`` of a ``<pair>-A.<ext>`` or
    ``<pair>-B.<ext>`` in ``<sources>``; restricted to ``pairs`` when given (each must exist).
    As for ``fuse-dir``, the letter and the suffix may be in either case (``p1-a.JPG``) and
    dot-files are left out (:func:`_image_files`); two files for one source (``p1-A.jpg``
    and ``p1-a.png``) are refused naming both, as is a pair with only one of its shots (naming
    it), so that a table never loses a pair silently nor takes one of two files by chance; so
    are two pairs whose names differ only in case or Unicode normalization (``P`` and ``p``,
    :func:`bafusion.fusion.batch.same_file_key`), whose outputs would be one file on macOS and
    Windows. A pair's file (source, truth, decision map) that is a named pipe, a device, a socket
    or a broken link is refused naming it (:func:`_not_regular`)."""
    src = ds.sources
    if not src.is_dir():
        raise InputFileError(src, f"sources folder of dataset {ds.name!r} not found")
    files = _image_files(src)
    if (src / "index.json").is_file():
        from bafusion.fusion.testset import read_pair_index

        names = read_pair_index(src)
    else:
        import fnmatch

        from bafusion.fusion.batch import _SHOT  # fuse-dir's <name>-<letter>

        shots = [m for m in map(_SHOT.match, files) if m is not None and m["letter"] in "ABab"]
        names = sorted({m["name"] for m in shots if fnmatch.fnmatchcase(m["name"], ds.pattern)})
    if ds.pairs:
        missing = [p for p in ds.pairs if p not in names]
        if missing:
            raise InputFileError(src, f"dataset {ds.name!r}: configured pair(s) {missing} not found")
        names = list(ds.pairs)
    if not names:
        raise InputFileError(src, f"dataset {ds.name!r}: no pairs (<name>-A.<ext> matching {ds.pattern!r})")
    from bafusion.fusion.batch import name_difference, same_file_key, where_one_file

    seen: dict[str, str] = {}
    for n in names:  # P and p: fused/<method>/P.png and p.png are one file on macOS and Windows (NFC/NFD: macOS)
        first = seen.setdefault(same_file_key(n), n)
        if first != n:
            raise InputFileError(src, f"dataset {ds.name!r}: pairs {first!r} and {n!r} differ only in "
                                 f"{name_difference(n, first)}: their outputs (fused/<method>/{n}.png, ...) would be "
                                 f"one file {where_one_file(n, first)}: rename one of them, or leave one out "
                                 "(pattern, pairs)")
    pairs = []
    for n in names:
        where = f"dataset {ds.name!r}, pair {n!r}"
        pa, pb = (_find_file(files, (f"{n}-{k}", f"{n}-{k.lower()}"), src, f"{where}: source {k}") for k in "AB")
        if pa is None or pb is None:
            k = "A" if pa is None else "B"
            raise InputFileError(src, f"{where}: source {k} missing" + _unread_hint(src, (f"{n}-{k}", f"{n}-{k.lower()}")))
        truth = _find_file(files, (f"{n}-truth",), src, f"{where}: truth")
        dm = _find_file(files, (f"{n}-dm",), src, f"{where}: decision map")
        for what, f in (("source A", pa), ("source B", pb), ("truth", truth), ("decision map", dm)):
            why = _not_regular(f) if f is not None else None
            if why:  # before any work: a named pipe hung the reading, waiting for a writer
                raise InputFileError(f, f"{where}: {what}: {why}")
        pairs.append(Pair(n, pa, pb, truth, dm))
    return pairs


# --------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------

Rows = Sequence[Mapping[str, Any]]
"""Long-format results: one mapping per (pair, method) with keys 'pair', 'method' and values."""


def _better(metric: str, x: float, y: float) -> bool:
    """Whether ``x`` is strictly better than ``y`` for ``metric``."""
    return x < y if metric in LOWER_IS_BETTER else x > y


def _finite(v: Any) -> bool:
    """Whether ``v`` is a defined value: a number, not NaN. An infinite value is defined (the
    PSNR of a fused image equal to the truth is +inf: the best there is, not undefined)."""
    return v is not None and isinstance(v, (int, float, np.floating)) and not math.isnan(float(v))


def count_wins(rows: Rows, methods: Sequence[str], metric: str) -> dict[str, int]:
    """Per method, the number of pairs on which its ``metric`` value is strictly better than the
    value of every other method in ``methods`` with a finite value there. Ties for the best
    value: no win for anyone. NaN/missing never wins and is not a competitor. A method alone
    with a finite value wins that pair (it beats all others present), but a lone method in
    ``methods`` wins nothing: there is no one to beat. A count, not a mean: a
    method undefined on some pairs only has fewer pairs to win (tables mark it,
    :func:`partial_mark`)."""
    if len(set(methods)) < 2:
        return {m: 0 for m in methods}
    by_pair: dict[str, dict[str, float]] = {}
    for r in rows:
        if r["method"] in methods and _finite(r.get(metric)):
            by_pair.setdefault(str(r["pair"]), {})[str(r["method"])] = float(r[metric])
    wins = {m: 0 for m in methods}
    for vals in by_pair.values():
        for m, v in vals.items():
            if all(_better(metric, v, w) for o, w in vals.items() if o != m):
                wins[m] += 1
    return wins


#: The value an infinite PSNR (a fused image equal to the truth) counts as in a mean: one pair
#: equal to the truth made the method's mean ``inf`` whatever its other pairs were. 100 dB is
#: beyond any 8-bit image that differs from the truth (one level off in one pixel of a 1 MP
#: image is 108 dB; a typical fusion is 30-45 dB), so it still ranks a perfect pair best.
INF_PSNR_IN_MEANS = 100.0


def mean_values(rows: Rows, methods: Sequence[str], metric: str) -> dict[str, float]:
    """Per method, the mean of its defined ``metric`` values (NaN when it has none); an infinite
    value (the PSNR of a pair equal to the truth) counts as :data:`INF_PSNR_IN_MEANS`. A mean over
    fewer pairs than others' (:func:`defined_counts`) is not comparable with theirs: the tables
    mark it (:func:`partial_mark`), and :func:`best_methods` and :func:`rank_of` put it behind."""
    by_method: dict[str, list[float]] = {m: [] for m in methods}  # one pass over rows, in their order
    for r in rows:
        vals = by_method.get(r["method"])
        if vals is not None and _finite(r.get(metric)):
            v = float(r[metric])
            vals.append(min(v, INF_PSNR_IN_MEANS) if math.isinf(v) else v)
    return {m: float(np.mean(vals)) if vals else float("nan") for m, vals in by_method.items()}


def defined_counts(rows: Rows, methods: Sequence[str], metric: str) -> dict[str, int]:
    """Per method, the number of its rows (pairs) with a finite ``metric`` value: the pairs its
    mean (:func:`mean_values`) is taken over."""
    counts = dict.fromkeys(methods, 0)  # one pass over rows
    for r in rows:
        m = r["method"]
        if m in counts and _finite(r.get(metric)):
            counts[m] += 1
    return counts


def _npairs(rows: Rows) -> int:
    return len({r["pair"] for r in rows})


def partial_mark(k: int, n: int) -> str:
    """`` (n=k/N)`` after a mean over ``k`` of the table's ``n`` pairs (the metric is NaN on the
    others, e.g. on a flat output); empty for a mean over all pairs or over none (``n/a``)."""
    return f" (n={k}/{n})" if 0 < k < n else ""


def _complete(means: Mapping[str, float], counts: Mapping[str, int] | None) -> set[str]:
    """The methods with a finite mean over the most pairs (all with a finite mean without counts)."""
    finite = [m for m, v in means.items() if not math.isnan(v)]
    if counts is None or not finite:
        return set(finite)
    full = max(counts[m] for m in finite)
    return {m for m in finite if counts[m] == full}


def best_methods(means: Mapping[str, float], metric: str, counts: Mapping[str, int] | None = None) -> set[str]:
    """The methods whose mean is best (all of them when tied; none when no mean is finite).

    With ``counts`` (:func:`defined_counts`), only the methods whose mean is over the most pairs
    compete: a mean over fewer pairs (NaN on the others) is never best, as it leaves out
    exactly the pairs where its method's output was degenerate. A method alone in ``means`` is
    not best: there is nothing to compare it with."""
    finite = {m: means[m] for m in _complete(means, counts)}
    if not finite or len(means) < 2:
        return set()
    best = min(finite.values()) if metric in LOWER_IS_BETTER else max(finite.values())
    return {m for m, v in finite.items() if v == best}


def _fmt(metric: str, v: float) -> str:
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):  # PSNR of an output equal to the truth
        return "inf" if v > 0 else "-inf"
    return f"{v:.2f}" if metric == "PSNR" else f"{v:.4f}"


PARTIAL_NOTE = (
    "(n=k/N): mean over the k of the N pairs where the metric is defined (NaN on the others, e.g. "
    "on a flat output); a mean over fewer pairs than another's is never bold and ranks behind it."
)
"""The note under a table that has a :func:`partial_mark`."""

TRUTH_PARTIAL_NOTE = (
    "(n=k/N): mean over the k of the N pairs of this table where the metric has a value: the pair has the "
    "file it needs (`<pair>-truth` for PSNR and SSIM, `<pair>-dm` for DM_acc) and the value is defined; a "
    "mean over fewer pairs than another's is never bold and ranks behind it."
)
"""The note under the truth table (PSNR, SSIM, DM_acc) when it has a :func:`partial_mark`: a
pair without the metric's file has no value, as a NaN has none."""


def table_markdown(rows: Rows, methods: Sequence[str], metrics: Sequence[str],
                   storage: Mapping[str, str] | None = None, aside: Rows = (), partial_note: str = PARTIAL_NOTE) -> str:
    """A Markdown table, one row per method and one column per metric: the mean, in
    parentheses the win count (:func:`count_wins`), the best mean in bold (lower for QCV). A
    mean over fewer than the table's pairs is marked ``(n=k/N)`` (:func:`partial_mark`), with a
    note under the table; it is never bold when another mean is over more pairs
    (:func:`best_methods`).

    ``storage`` (method -> text, :func:`storage_labels`) adds a *Scored as* column after the
    method: how each method's images were stored when they were measured. ``aside``: rows of
    further methods (e.g. our output before JPEG re-encoding) shown in italics under the others,
    with their means only: they take no part in the wins and the bold (:data:`ASIDE_NOTE`).
    ``partial_note``: the note under a table with a ``(n=k/N)`` mark (:data:`TRUTH_PARTIAL_NOTE`
    for the truth table)."""
    cols_head = ["Method", *(["Scored as"] if storage is not None else [])]
    header = "| " + " | ".join(cols_head) + " | " + " | ".join(
        f"{m} {'↓' if m in LOWER_IS_BETTER else '↑'}" for m in metrics) + " |"
    lines = [header, "|" + "---|" * len(cols_head) + "---:|" * len(metrics)]
    label = (lambda m: f" {storage[m]} |" if storage.get(m) else " |") if storage is not None else (lambda m: "")
    npairs = _npairs(rows)
    cols = {}
    for q in metrics:
        means, counts = mean_values(rows, methods, q), defined_counts(rows, methods, q)
        cols[q] = (means, counts, count_wins(rows, methods, q), best_methods(means, q, counts))
    partial = False
    capped: dict[str, dict[str, int]] = {}
    for m in methods:
        cells = []
        for q in metrics:
            means, counts, wins, best = cols[q]
            s = _fmt(q, means[m]) + _capped_mark(rows, m, q, capped)
            mark = partial_mark(counts[m], npairs)
            partial = partial or bool(mark)
            cells.append(f"**{s}**{mark} ({wins[m]})" if m in best else f"{s}{mark} ({wins[m]})")
        lines.append(f"| {m} |{label(m)} " + " | ".join(cells) + " |")
    aside_methods = list(dict.fromkeys(str(r["method"]) for r in aside))
    for m in aside_methods:
        cells = []
        for q in metrics:
            cells.append(_fmt(q, mean_values(aside, [m], q)[m]) + _capped_mark(aside, m, q, capped))
            mark = partial_mark(defined_counts(aside, [m], q)[m], npairs)
            partial = partial or bool(mark)
            cells[-1] = f"*{cells[-1]}*{mark}"
        lines.append(f"| *{m}* |{label(m)} " + " | ".join(cells) + " |")
    if aside_methods:
        lines += ["", ASIDE_NOTE]
    if partial:
        lines += ["", partial_note]
    if capped:
        lines += ["", capped_note(capped)]
    return "\n".join(lines) + "\n"


ASIDE_NOTE = (
    "Rows in italics: shown beside the table, not part of it: no win count, never bold, not ranked "
    "(the output of the methods computed here before the JPEG re-encoding that the table measures: what "
    "storage alone is worth)."
)
"""The note under a table with ``aside`` rows (:func:`table_markdown`)."""

CAPPED_MARK = "†"
"""The mark after a mean that counts an infinite value (a PSNR of a fused image equal to the
truth) as :data:`INF_PSNR_IN_MEANS`; :func:`capped_note` under the table says how many."""


def _capped_mark(rows: Rows, m: str, q: str, capped: dict[str, dict[str, int]]) -> str:
    """:data:`CAPPED_MARK` when ``m``'s mean of ``q`` counts infinite values as
    :data:`INF_PSNR_IN_MEANS` (their number recorded in ``capped[q][m]``), else empty."""
    k = _inf_pairs(rows, m, q)
    if not k:
        return ""
    capped.setdefault(q, {})[m] = k
    return CAPPED_MARK


#: The plots CSV's column ``n_inf_<metric>`` (``n_inf_PSNR``): per method, the number of its pairs
#: whose value is infinite (PSNR of a fused image equal to the truth), each counted as
#: :data:`INF_PSNR_IN_MEANS` in the mean beside it (the tables' :data:`CAPPED_MARK`); 0 for none.
INF_COUNT_PREFIX = "n_inf_"

#: The MLflow tag of the ``evaluate`` run that names the logged means counting such pairs as
#: :data:`INF_PSNR_IN_MEANS` (the tables' :data:`CAPPED_MARK`): a JSON object, metric key
#: (``<dataset>.<method>.PSNR``) -> number of pairs; absent where there are none.
CAPPED_TAG = "psnr_inf_pairs_in_means"
#: The MLflow tag of the ``evaluate`` run that names its logged counts, which have no direction
#: (``pairs``: ``<dataset>.pairs``; ``rank_of.QMI``: ``<dataset>.<method>.rank_of.QMI``, how many
#: methods our rank is out of), beside ``higher_is_better`` and ``lower_is_better``.
COUNTS_TAG = "counts"
#: The MLflow tag of the ``evaluate`` run that maps each metric name MLflow refuses to the name it
#: is logged under (:func:`_mlflow_metric_names`).
_RENAMED_TAG = "renamed_metrics"


def _mlflow_metric_names(metrics: Mapping[str, float]) -> tuple[dict[str, float], dict[str, str]]:
    """``metrics`` under names MLflow takes, and the renamed ones (given name -> logged name).

    MLflow refuses a metric name with a character other than letters, digits, ``_``, ``-``, ``.``,
    space, ``:`` and ``/``: one reference method named so (``NSCT+SR``, ``Mine(v2)``), or a
    dataset, failed the run's whole batch, and tracking went off with every metric of the run
    lost. Each such character becomes ``_``; a name that then equals another gets ``-`` and the
    first 8 hex digits of the SHA-256 of the name as given, as the figures' file names do."""
    import hashlib
    import re

    bad = re.compile(r"[^\w\-. :/]")
    out: dict[str, float] = {}
    renamed: dict[str, str] = {}
    for k, v in metrics.items():
        safe = bad.sub("_", k)
        if safe != k:
            if safe in metrics or safe in out:
                safe += "-" + hashlib.sha256(k.encode("utf-8", "surrogatepass")).hexdigest()[:8]
            renamed[k] = safe
        out[safe] = v
    return out, renamed


#: The most characters of a tag's value MLflow keeps (``mlflow.utils.validation.MAX_TAG_VAL_LENGTH``:
#: a longer one is cut, with a warning only).
_TAG_MAX = 8000


def _tag_renamed(run: Any, renamed: Mapping[str, str]) -> None:
    """Tag ``run`` with :data:`_RENAMED_TAG`, the map of :func:`_mlflow_metric_names`' renamed
    metrics. A map longer than :data:`_TAG_MAX` characters (a dataset named with a refused
    character renames every metric of it) was cut by MLflow to invalid JSON: it is logged as
    the artifact ``renamed_metrics.json``, and the tag names it."""
    import tempfile

    text = json.dumps(dict(renamed), sort_keys=True)
    if len(text) > _TAG_MAX:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"{_RENAMED_TAG}.json"
            path.write_text(text + "\n", encoding="utf-8")
            run.log_artifact(path)
        text = f"{len(renamed)} names, too many for a tag: see the artifact {_RENAMED_TAG}.json"
    run.set_tag(_RENAMED_TAG, text)


def _inf_pairs(rows: Rows, m: str, q: str) -> int:
    """The number of ``m``'s pairs in ``rows`` whose value of ``q`` is infinite (counted as
    :data:`INF_PSNR_IN_MEANS` in its mean)."""
    return sum(1 for r in rows if r["method"] == m and _finite(r.get(q)) and math.isinf(float(r[q])))


def capped_note(capped: Mapping[str, Mapping[str, int]]) -> str:
    """The note under a table with :data:`CAPPED_MARK`: per metric, the methods and their number of
    pairs whose value is infinite (the fused image equals the truth: PSNR ``inf`` in metrics.csv),
    each counted as :data:`INF_PSNR_IN_MEANS` in the mean."""
    per = "; ".join(f"{q}: " + ", ".join(f"{m} {k} pair(s)" for m, k in by_m.items()) for q, by_m in capped.items())
    return (f"{CAPPED_MARK}: mean over pairs some of which are exact (the fused image equals the truth, PSNR inf in "
            f"metrics.csv), each counted as {INF_PSNR_IN_MEANS:g} dB ({per}).")


def _has_values(rows: Rows, methods: Sequence[str], metric: str) -> bool:
    return any(_finite(r.get(metric)) for r in rows if r["method"] in methods)


def _table1_methods(methods: Sequence[str]) -> list[str]:
    """The methods of Table 1 proper: all but the ablation variant when our final one is there."""
    return [m for m in methods if m != OURS_INITIAL] if OURS in methods else list(methods)


def set_rows(rows: Rows, prefix: str) -> list[Mapping[str, Any]]:
    """The rows of the pairs whose name starts with ``prefix`` (``"all"`` or ``""``: all rows)."""
    if prefix in ("", "all"):
        return list(rows)
    return [r for r in rows if str(r["pair"]).startswith(prefix)]


def rank_of(rows: Rows, methods: Sequence[str], metric: str, method: str) -> tuple[int | None, int]:
    """(rank, n): the competition rank of ``method``'s mean among the finite means of
    ``methods`` (1 + the number of methods with a strictly better mean, so ties share a rank),
    and the number of methods with a finite mean. Rank None when its own mean is not finite.

    Means over fewer pairs than the most (:func:`defined_counts`; NaN on the others) rank behind
    all means over the most pairs, and among themselves by their means: a method cannot climb
    by leaving out the pairs where its output was degenerate."""
    all_means = mean_values(rows, methods, metric)
    means = {m: v for m, v in all_means.items() if not math.isnan(v)}
    if method not in means:
        return None, len(means)
    complete = _complete(all_means, defined_counts(rows, methods, metric))
    same = [m for m in means if (m in complete) == (method in complete) and m != method]
    ahead = 0 if method in complete else len(complete)
    return 1 + ahead + sum(_better(metric, means[m], means[method]) for m in same), len(means)


def ordinal(n: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st, ..."""
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _rank_rivals(methods: Sequence[str], ours: str) -> list[str]:
    """The methods ``ours`` is ranked among: Table 1's, with ``ours`` in place of our other variant."""
    main = _table1_methods(methods)
    return [m for m in main if m not in (OURS, OURS_INITIAL)] + [ours]


def _set_names(sets: Sequence[str]) -> list[str]:
    return [*sets, "all"] if sets else ["all"]


def _lossless_rows(rows: Rows, metrics: Sequence[str]) -> list[dict[str, Any]]:
    """The rows that have values before JPEG re-encoding, with those values under the plain names."""
    return [
        {"pair": r["pair"], "method": r["method"], **{q: r.get(f"{LOSSLESS}{q}") for q in metrics}}
        for r in rows
        if any(_finite(r.get(f"{LOSSLESS}{q}")) for q in metrics)
    ]


def table1_document(
    dataset: str,
    rows: Rows,
    methods: Sequence[str],
    metrics: Sequence[str],
    sets: Sequence[str] = (),
    notes: Sequence[str] = (),
    storage: Mapping[str, Mapping[str, str]] | None = None,
) -> str:
    """``table1.md``: Table 1 (our final method and the baselines), our rank per metric (per
    set when ``sets`` are given), Table 1 per set, the ablation with both of our variants, the
    values of our output before JPEG re-encoding (where it was re-encoded), and, where a truth
    exists, PSNR / SSIM / decision-map accuracy. ``notes`` are paragraphs for the header.

    ``storage``: per set name (``"all"`` and each of ``sets``) the *Scored as* text of each
    method (:func:`storage_labels`). With it, Table 1, the per-set tables and the ablation have
    a *Scored as* column, and Table 1 and the per-set tables show, in italics under the ranked
    rows, the values of the methods computed here (ours, native baselines) before JPEG re-encoding
    (``<method>, lossless``; not ranked)."""
    npairs = len({r["pair"] for r in rows})
    main = _table1_methods(methods)

    def aside(sr: Rows) -> list[dict[str, Any]]:
        if storage is None:
            return []
        return [{**r, "method": f"{r['method']}, lossless"} for r in _lossless_rows(sr, metrics) if r["method"] in main]

    def labels(sname: str, sr: Rows) -> Mapping[str, str] | None:
        if storage is None:
            return None
        lab = dict(storage.get(sname, {}))
        for r in aside(sr):
            lab.setdefault(r["method"], "as computed (PNG, lossless), before re-encoding")
        return lab

    parts = [
        f"# Table 1: {dataset} ({npairs} pairs)\n",
        "Mean over the pairs; in parentheses the number of pairs on which the method is strictly "
        "better than every other method of the same table (a tie for the best value counts for "
        "nobody); bold: the best mean. ↑ higher is better, ↓ lower is better.\n",
        *(f"{n}\n" for n in notes),
        table_markdown(rows, main, metrics, labels("all", rows), aside(rows)),
    ]
    ours = [m for m in (OURS, OURS_INITIAL) if m in methods]
    if ours and len(main) > 1:
        header = "| Method | Set | " + " | ".join(f"{q} {'↓' if q in LOWER_IS_BETTER else '↑'}" for q in metrics) + " |"
        lines = [header, "|---|---|" + "---:|" * len(metrics)]
        partial = False
        for m in ours:
            rivals = _rank_rivals(methods, m)
            for sname in _set_names(sets):
                sr = set_rows(rows, sname)
                if not sr:
                    continue
                cells = []
                for q in metrics:
                    k, n = rank_of(sr, rivals, q, m)
                    mark = partial_mark(defined_counts(sr, [m], q)[m], _npairs(sr))
                    partial = partial or bool(mark)
                    cells.append("n/a" if k is None else f"{ordinal(k)} of {n}{mark}")
                lines.append(f"| {m} | {sname} | " + " | ".join(cells) + " |")
        parts += [
            "\n## Rank of ours\n",
            "Rank of the mean among the methods of Table 1"
            + (f" ({OURS_INITIAL} ranked in place of {OURS})" if len(ours) == 2 else "")
            + "; equal means share a rank; per set: among the same methods on that set's pairs.\n",
            "\n".join([*lines, *(["", PARTIAL_NOTE] if partial else [])]) + "\n",
        ]
    for sname in sets:
        sr = set_rows(rows, sname)
        if not sr:
            continue
        parts += [f"\n## Set {sname} ({len({r['pair'] for r in sr})} pairs)\n",
                  table_markdown(sr, main, metrics, labels(sname, sr), aside(sr))]
    if OURS in methods and OURS_INITIAL in methods:
        parts += [
            "\n## Ablation: with and without boundary refinement\n",
            f"{OURS_INITIAL}: the initial net's decision map (no boundary net). Wins are counted "
            "among all methods below.\n",
            table_markdown(rows, list(methods), metrics, None if storage is None else storage.get("all", {})),
        ]
    lossless = _lossless_rows(rows, metrics)
    if lossless:
        lm = [m for m in methods if any(r["method"] == m for r in lossless)]
        header = "| Method | Set | " + " | ".join(f"{q} {'↓' if q in LOWER_IS_BETTER else '↑'}" for q in metrics) + " |"
        lines = [header, "|---|---|" + "---:|" * len(metrics)]
        partial = False
        for m in lm:
            for sname in _set_names(sets):
                sr = set_rows(lossless, sname)
                if any(r["method"] == m for r in sr):
                    n = _npairs(sr)
                    cells = [_fmt(q, mean_values(sr, [m], q)[m]) + partial_mark(defined_counts(sr, [m], q)[m], n)
                             for q in metrics]
                    partial = partial or any("(n=" in c for c in cells)
                    lines.append(f"| {m} | {sname} | " + " | ".join(cells) + " |")
        if partial:
            lines += ["", PARTIAL_NOTE]
        parts += [
            "\n## Lossless output (before JPEG re-encoding)\n",
            "Means of the methods computed here measured on their output as computed (PNG, "
            "lossless), before the re-encoding that the tables above measure; not comparable "
            "with the peers' values, which include the loss of their published JPEG files.\n",
            "\n".join(lines) + "\n",
        ]
    truth = [q for q in TRUTH_METRICS if _has_values(rows, methods, q)]
    if truth:
        # a pair's row has a truth metric only where the pair has its file (-truth: PSNR, SSIM;
        # -dm: DM_acc): the table is over the pairs with one, not (n=1/3) as if NaN on the others
        order = list(dict.fromkeys(r["pair"] for r in rows))
        having = {q: [p for p in order if any(r["pair"] == p and r.get(q) is not None for r in rows)] for q in truth}
        tpairs = [p for p in order if any(p in having[q] for q in truth)]
        trows = [r for r in rows if r["pair"] in tpairs]
        files = {q: "`<pair>-dm`" if q == "DM_acc" else "`<pair>-truth`" for q in truth}
        counts = "; ".join(dict.fromkeys(
            f"{', '.join(x for x in truth if files[x] == files[q])}: the {len(having[q])} pair(s) with a {files[q]} file"
            for q in truth))
        parts += [
            "\n## Against the all-in-focus truth\n",
            "PSNR (dB) and SSIM of the fused image against the truth"
            + ("; DM_acc: share of pixels where the decision map equals the true map (our methods "
               "only, as the others make no binary decision map)" if "DM_acc" in truth else "")
            + (f". Over the {len(tpairs)} of the {npairs} pairs that have a truth or a true map ({counts})"
               + ("; the others have neither" if len(tpairs) < npairs else "")
               if len(tpairs) < npairs or any(len(having[q]) < len(tpairs) for q in truth) else "")
            + ".\n",
            table_markdown(trows, [m for m in methods if any(_finite(r.get(q)) for q in truth for r in rows if r["method"] == m)],
                           truth, partial_note=TRUTH_PARTIAL_NOTE),
        ]
    return "\n".join(parts)


def rows_to_csv(rows: Rows, columns: Sequence[str]) -> str:
    """CSV text with ``columns`` (missing / NaN values as empty cells, floats in full precision,
    an infinite PSNR as ``inf``)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c)
            if isinstance(v, (float, np.floating)):
                cells.append("" if math.isnan(v) else repr(float(v)))  # inf: "inf" (PSNR of a perfect output)
            else:
                cells.append("" if v is None else str(v))
        w.writerow(cells)
    return buf.getvalue()


# --------------------------------------------------------------------------------------
# Per pair
# --------------------------------------------------------------------------------------


def truth_metrics(truth: np.ndarray, f: np.ndarray) -> dict[str, float]:
    """PSNR and SSIM of ``f`` against the all-in-focus ``truth`` (uint8, data range 255; colour
    SSIM averaged over channels; a gray image against a colour one is compared in gray)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    from bafusion.io import gray_float

    t, g = np.asarray(truth), np.asarray(f)
    if t.ndim != g.ndim or t.shape != g.shape:
        t, g = gray_float(t, rounded=True), gray_float(g, rounded=True)
    t64, g64 = t.astype(np.float64), g.astype(np.float64)
    psnr = float(peak_signal_noise_ratio(t64, g64, data_range=255.0)) if not np.array_equal(t64, g64) else float("inf")
    ssim = float(structural_similarity(t64, g64, data_range=255.0, channel_axis=2 if t64.ndim == 3 else None))
    return {"PSNR": psnr, "SSIM": ssim}


class MetricError(RuntimeError):
    """A metric failed on one pair (a bug, or input the checks let through): the message names
    the dataset, pair, method and metric; the metric's own exception is its ``__cause__``."""


def _measured(where: str, compute: Any, metric: str = "(before the first metric)") -> dict[str, float]:
    """``compute(stage)`` (values by metric; it may call ``stage`` with each metric's name before
    computing it, as :func:`~bafusion.evaluation.metrics.compute_all` does; else ``metric`` names
    what it computes), an exception of which names ``where`` (dataset, pair and method) and the
    metric: a :class:`UserError` stays one, any other becomes a :class:`MetricError`, the
    original as the cause. Running out of memory is raised as it is (the command's advice for
    it is about memory, not this pair)."""
    current = [metric]

    def stage(name: str) -> None:
        current[0] = name

    try:
        return compute(stage)
    except UserError as e:
        raise UserError(f"{where}, metric {current[0]}: {e}") from e
    except Exception as e:
        if is_out_of_memory(e):
            raise
        raise MetricError(f"{where}, metric {current[0]}: {type(e).__name__}: {e}") from e


def _check_shape(img: np.ndarray, ref: np.ndarray, dataset: str, pair: str, method: str, path: object) -> None:
    if img.shape[:2] != ref.shape[:2]:
        h, w = img.shape[:2]
        hr, wr = ref.shape[:2]
        raise InputFileError(
            path,
            f"dataset {dataset!r}, pair {pair!r}, method {method!r}: fused image is {w}x{h} (WxH) "
            f"but the sources are {wr}x{hr}",
        )


def _ours(a: np.ndarray, b: np.ndarray, nets: Any, params: Any, names: tuple[str, str],
          progress: bool | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Both of our variants from one fusion run: {method: (fused uint8, decision map)};
    ``progress``: the fusion's progress bar (:func:`bafusion.fusion.working.progress_bar`)."""
    from bafusion.fusion.rule import (
        _fuse_pair,
        _match_channels,
        clean_decision,
        fuse_with_map,
    )

    # fuse_images without its memory check (evaluate is not checked: README), on the command line's threads
    res = _fuse_pair(a, b, nets, replace(params, refine=True), names, progress=progress)
    ma, mb = _match_channels(a, b)
    dm0 = clean_decision(res.score_initial > params.threshold, res.score_initial, params)
    return {OURS: (res.fused, res.decision), OURS_INITIAL: (fuse_with_map(ma, mb, dm0), dm0)}


def evaluate_pair(
    dataset: Dataset,
    pair: Pair,
    cfg: EvalConfig,
    nets: Any = None,
    fusion_params: Any = None,
    progress: bool | None = None,
) -> tuple[list[dict[str, Any]], dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Fuse and score one pair with every method (``progress``: our fusion's progress bar, as
    :func:`bafusion.fusion.working.progress_bar` takes it; None: on a terminal, for large pairs).

    Returns the rows (one per method), the fused uint8 images by method, and the sources.
    The sources' share of the metric work is done once (:class:`~bafusion.evaluation.metrics.MetricCache`)."""
    from bafusion.evaluation.baselines import (
        find_method_result,
        gff_fuse,
        laplacian_fuse,
        read_method_results,
    )
    from bafusion.evaluation.metrics import (
        MetricCache,
        compute_all,
    )
    from bafusion.io import gray_float, read_image, read_images, to_uint8

    a, b = read_images([pair.a, pair.b])  # one set: > 8 bits per sample scaled alike
    if a.shape[:2] != b.shape[:2]:
        raise InputFileError(
            pair.b, f"dataset {dataset.name!r}, pair {pair.name!r}: B is {b.shape[1]}x{b.shape[0]} (WxH) "
            f"but A is {a.shape[1]}x{a.shape[0]}"
        )
    if a.ndim != b.ndim:  # one gray shot, one colour: the gray one as colour, as fusion takes them
        a, b = (np.repeat(x[..., None], 3, axis=2) if x.ndim == 2 else x for x in (a, b))
    fused: dict[str, np.ndarray] = {}
    dms: dict[str, np.ndarray] = {}
    wants_ours = [m for m in cfg.methods if m in (OURS, OURS_INITIAL)]
    if wants_ours:
        if nets is None:
            raise UserError(f"methods {wants_ours} need the trained nets (none loaded)")
        ours = _ours(a, b, nets, fusion_params, (str(pair.a), str(pair.b)), progress)
    for m in cfg.methods:
        if m in (OURS, OURS_INITIAL):
            fused[m], dms[m] = ours[m]
        elif m == "GFF-native":
            fused[m] = to_uint8(gff_fuse(a, b))
        elif m == "Laplacian":
            fused[m] = to_uint8(laplacian_fuse(a, b))
    peers = read_peer_metrics(dataset.reference_metrics) if dataset.reference_metrics is not None else None
    peer_rows: list[dict[str, Any]] = []
    for m in dataset.reference_methods if dataset.has_peers() else ():
        if peers is not None and m in peers.methods:
            vals = peers.values.get((pair.name, m))
            if vals is None:
                raise InputFileError(
                    peers.path, f"dataset {dataset.name!r}, pair {pair.name!r}, method {m!r}: no row in the reference metrics"
                )
            peer_rows.append({"dataset": dataset.name, "pair": pair.name, "method": m,
                              **{q: float(vals.get(q, float("nan"))) for q in cfg.metrics}})
            continue
        if dataset.reference is None:
            raise UserError(f"dataset {dataset.name!r}: reference method {m!r} is not in the reference metrics CSV")
        try:
            img = read_method_results(dataset.reference, m, pair.name, (pair.a, pair.b))  # as the metrics read F
        except InputFileError as e:
            raise InputFileError(
                e.path, f"dataset {dataset.name!r}, pair {pair.name!r}, method {m!r}: {e.problem}"
            ) from None
        except UserError as e:  # an unmarked deeper result beside 8-bit sources
            raise UserError(f"dataset {dataset.name!r}, pair {pair.name!r}, method {m!r}: {e}") from None
        _check_shape(img, a, dataset.name, pair.name, m,
                     find_method_result(dataset.reference, m, pair.name) or dataset.reference / m)
        fused[m] = img
    truth = read_image(pair.truth) if pair.truth is not None else None
    if truth is not None and truth.shape[:2] != a.shape[:2]:
        raise InputFileError(pair.truth, f"dataset {dataset.name!r}, pair {pair.name!r}: truth size differs from the sources")
    true_dm = None
    if pair.dm is not None:
        true_dm = gray_float(read_image(pair.dm), rounded=True) > 127
        if true_dm.shape != a.shape[:2]:
            raise InputFileError(pair.dm, f"dataset {dataset.name!r}, pair {pair.name!r}: decision map size differs from the sources")
    cache = MetricCache()
    quality = dataset.quality_for(pair.name)
    rows = []
    for m, f in fused.items():
        _check_shape(f, a, dataset.name, pair.name, m, m)
        row: dict[str, Any] = {"dataset": dataset.name, "pair": pair.name, "method": m}
        measured = f
        if quality is not None and m in cfg.methods:
            # computed here: measured as stored like the peers' files (JPEG at their quality),
            # and also as computed (lossless_* columns)
            measured = jpeg_reencode(f, quality)[0]
            row["jpeg_quality"] = quality
            where = f"dataset {dataset.name!r}, pair {pair.name!r}, method {m!r} (before the JPEG re-encoding)"
            lossless = _measured(where, lambda stage: compute_all(a, b, f, cfg.metrics, cache=cache, stage=stage))
            if truth is not None:
                lossless.update(_measured(where, lambda _: truth_metrics(truth, f), "PSNR/SSIM"))
            row.update({f"{LOSSLESS}{q}": v for q, v in lossless.items()})
        where = f"dataset {dataset.name!r}, pair {pair.name!r}, method {m!r}"
        row.update(_measured(where, lambda stage: compute_all(a, b, measured, cfg.metrics, cache=cache, stage=stage)))
        if truth is not None:
            row.update(_measured(where, lambda _: truth_metrics(truth, measured), "PSNR/SSIM"))
        if true_dm is not None and m in dms:
            row.update(_measured(where, lambda _: {"DM_acc": float((dms[m] == true_dm).mean())}, "DM_acc"))
        rows.append(row)
    return peer_rows + rows, fused, (a, b)


# --------------------------------------------------------------------------------------
# Per dataset and overall
# --------------------------------------------------------------------------------------


def _method_order(cfg: EvalConfig, ds: Dataset) -> list[str]:
    """Reference baselines first (as in the paper's table), then native ones, ours last."""
    refs = list(ds.reference_methods) if ds.has_peers() else []
    native = [m for m in cfg.methods if m in NATIVE_METHODS]
    ours = [m for m in (OURS_INITIAL, OURS) if m in cfg.methods]
    return refs + native + ours


def _check_peer_rows(ds: Dataset, pairs: Sequence[Pair], metrics: Sequence[str] | None = None) -> None:
    """Fail before any fusion when the reference metrics lack a (pair, method) of the table, or
    have a blank (or NaN) cell in a column of ``metrics`` (default: all of the CSV's) for some of
    its pairs but not all: its mean would be over fewer pairs than the others'. A method blank on
    every pair of a metric is ``n/a`` for it, as for a metric that the CSV lacks."""
    if ds.reference_metrics is None:
        return
    peers = read_peer_metrics(ds.reference_metrics)
    for m in ds.reference_methods:
        if m not in peers.methods:
            continue
        missing = [p.name for p in pairs if (p.name, m) not in peers.values]
        if missing:
            raise InputFileError(
                peers.path, f"dataset {ds.name!r}, method {m!r}: no row for pair(s) {missing[:5]}"
                + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            )
        for q in peers.metrics if metrics is None else [q for q in metrics if q in peers.metrics]:
            blank = [p.name for p in pairs if not math.isfinite(peers.values[(p.name, m)][q])]
            if blank and len(blank) < len(pairs):
                line = peers.lines.get((blank[0], m), "?")
                raise InputFileError(
                    peers.path, f"line {line}, column {peers.columns.get(q, q)}: no value (pair {blank[0]!r}, "
                    f"method {m!r}, dataset {ds.name!r})" + (f"; {len(blank) - 1} more blank in that column"
                                                             if len(blank) > 1 else "")
                    + f"; a peer needs a value on every pair ({len(pairs) - len(blank)} of {len(pairs)} have one)"
                    " or none (n/a), else its mean is over fewer pairs than the others'"
                )


def _check_reference_images(ds: Dataset, pairs: Sequence[Pair]) -> None:
    """Fail before any fusion when a reference method read from the ``reference`` folder lacks
    the fused image of a pair: one line with the first few missing files and their count (it
    was found only on reaching that pair, after fusing the ones before); or has two of one pair
    (``p1.png`` and ``p1.jpg``: :func:`~bafusion.evaluation.baselines.find_method_result`), or
    one of another size than its pair's sources (naming the file), or one that is a named pipe,
    a device, a socket or a broken link (naming it: it was "missing")."""
    from bafusion.evaluation.baselines import IMAGE_EXTENSIONS as RESULT_EXTENSIONS
    from bafusion.evaluation.baselines import _not_regular_result, find_method_result

    if ds.reference is None:
        return
    csv_methods = read_peer_metrics(ds.reference_metrics).methods if ds.reference_metrics is not None else ()
    _check_stored_once(ds, [m for m in ds.reference_methods if m not in csv_methods], pairs)
    missing: list[str] = []
    n = 0
    methods: list[str] = []
    for m in ds.reference_methods:
        if m in csv_methods:
            continue
        if not (ds.reference / m).is_dir():
            lacking = [f"{m}/ (folder missing)"]
            n += len(pairs)
        else:
            lacking = []
            for p in pairs:
                f = find_method_result(ds.reference, m, p.name)
                if f is None:
                    lacking.append(f"{m}/{p.name}.*")
                    continue
                try:  # a named pipe, a device, a socket, a broken link: named, not "missing"
                    _not_regular_result(f, m, p.name)
                except InputFileError as e:
                    raise InputFileError(e.path, f"dataset {ds.name!r}: {e.problem}") from None
            n += len(lacking)
        missing += lacking
        methods += [repr(m)] if lacking else []
    if missing:
        found = reference_folders(ds.reference)
        raise InputFileError(
            ds.reference, f"dataset {ds.name!r}: {n} fused image(s) of method(s) {', '.join(methods)} missing: "
            + ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            + f" (* = {', '.join(RESULT_EXTENSIONS)} or another format of the pairs); the methods read from the reference folder are the dataset's "
            f"reference_methods, here {', '.join(ds.reference_methods)}"
            + (" (the default: the paper's six)" if ds.reference_methods == REFERENCE_METHODS else "")
            + ", each in <reference>/<METHOD>/<pair>.<ext>; "
            f"its sub-folders: {', '.join(found) if found else 'none'}"
        )
    _check_reference_sizes(ds, pairs, [m for m in ds.reference_methods if m not in csv_methods])


def _check_stored_once(ds: Dataset, methods: Sequence[str], pairs: Sequence[Pair]) -> None:
    """Refuse reference results stored twice (``p1.png`` and ``p1.jpg``:
    :func:`~bafusion.evaluation.baselines.find_method_result`), naming the first and, when there
    are more, a few others and their count (one run per pair was needed to find them all)."""
    from bafusion.evaluation.baselines import _method_result_files, find_method_result

    assert ds.reference is not None
    twice = [(m, p.name, files) for m in methods if (ds.reference / m).is_dir() for p in pairs
             if len(files := _method_result_files(ds.reference / m, p.name)) > 1]
    if not twice:
        return
    m, pair, _ = twice[0]
    try:
        find_method_result(ds.reference, m, pair)
    except InputFileError as e:
        more = ""
        if len(twice) > 1:
            shown = [f"{mm}: {', '.join(f.name for f in files)}" for mm, _, files in twice[1:6]]
            more = (f"; {len(twice) - 1} more result(s) stored more than once: " + "; ".join(shown)
                    + (f" and {len(twice) - 6} more" if len(twice) > 6 else ""))
        folders = {mm for mm, _, _ in twice}
        raise InputFileError(e.path if len(folders) == 1 else ds.reference,
                             f"dataset {ds.name!r}: {e.problem}{more}") from None
    raise AssertionError(f"{m}/{pair}: stored twice but found once")  # pragma: no cover


def _check_reference_sizes(ds: Dataset, pairs: Sequence[Pair], methods: Sequence[str]) -> None:
    """Fail before any fusion, naming the file, when a reference method's fused image is of
    another size than its pair's sources (it was found only on reaching the pair, naming the
    method's folder). Only the headers are read (:func:`bafusion.io.image_info`)."""
    from bafusion.evaluation.baselines import find_method_result
    from bafusion.io import image_info

    assert ds.reference is not None
    for p in pairs:
        src = None
        for m in methods:
            f = find_method_result(ds.reference, m, p.name)
            if f is None:
                continue
            if src is None:
                src = image_info(p.a)
            info = image_info(f)
            if (info.width, info.height) != (src.width, src.height):
                raise InputFileError(f, f"dataset {ds.name!r}, pair {p.name!r}, method {m!r}: fused image is "
                                        f"{info.width}x{info.height} (WxH) but the sources are {src.width}x{src.height}")


def _unlisted_reference_folders(ds: Dataset) -> list[str]:
    """The method folders of ``ds``'s reference folder (:func:`reference_folders`) that it does
    not compare because its ``reference_methods`` are the default (the paper's six, then a
    ``reference_metrics`` CSV's methods) and do not name them: a researcher's own method put
    beside the six (``<reference>/Mine/``) was left out of every table without a word. Folders
    named as a method computed here are not counted. Empty when ``reference_methods`` was
    chosen (the command line's ``--dataset NAME=PAIRS,REF`` takes every folder)."""
    if ds.reference is None or ds.reference_methods[:len(REFERENCE_METHODS)] != REFERENCE_METHODS:
        return []
    computed = (OURS, OURS_INITIAL, *NATIVE_METHODS)
    return [m for m in reference_folders(ds.reference) if m not in ds.reference_methods and m not in computed]


def reference_folders(reference: Path) -> list[str]:
    """The method folders of a ``reference`` root (its sub-folders, but dot-folders): the paper's
    six first, in their order, then the others by name."""
    try:
        names = {p.name for p in Path(reference).iterdir() if p.is_dir() and not p.name.startswith(".")}
    except OSError:
        return []
    return [m for m in REFERENCE_METHODS if m in names] + sorted(names - set(REFERENCE_METHODS))


#: SSIM's window (scikit-image's default 7x7): the truth-based measures of a pair with a truth
#: (:func:`truth_metrics`) need sources at least this wide and high.
_SSIM_MIN_SIDE = 7


def _check_sources(ds: Dataset, pairs: Sequence[Pair], metrics: Sequence[str] = ()) -> None:
    """Fail before any fusion when a pair's source is no readable image (its first frame is
    decoded, so a truncated file is caught; the sources are small beside the fusion) or its A
    and B differ in size: either was found only on reaching the pair, after fusing the ones
    before it. So is a truth or true decision map of another size than the sources, and a pair
    smaller than one of ``metrics`` needs (QY 11x11, QE 8x8:
    :data:`~bafusion.evaluation.metrics.MIN_SIDE`), or, with a truth, than SSIM needs (7x7: it
    is computed against every truth). The error names the file, the dataset and the pair."""
    from bafusion.evaluation.metrics import MIN_SIDE
    from bafusion.io import check_same_sizes, image_info

    for p in pairs:
        where = f"dataset {ds.name!r}, pair {p.name!r}"
        try:
            info = image_info(p.a, decode=True)
            check_same_sizes([info, image_info(p.b, decode=True)])
            small = [q for q in metrics if min(info.width, info.height) < MIN_SIDE.get(q, 1)]
            if small:
                need = ", ".join(f"{q} at least {MIN_SIDE[q]}x{MIN_SIDE[q]}" for q in small)
                raise InputFileError(p.a, f"the sources are {info.width}x{info.height} (WxH), too small for the "
                                          f"metrics asked for ({need} pixels): leave the pair out (pattern, pairs) "
                                          f"or {'that metric' if len(small) == 1 else 'those metrics'} (metrics)")
            for path, what in ((p.truth, "truth"), (p.dm, "decision map")):
                if path is not None:
                    t = image_info(path, decode=True)
                    if (t.width, t.height) != (info.width, info.height):
                        raise InputFileError(path, f"{what} is {t.width}x{t.height} (WxH) but the sources are "
                                                   f"{info.width}x{info.height}")
            if p.truth is not None and min(info.width, info.height) < _SSIM_MIN_SIDE:
                raise InputFileError(p.truth, f"the pair is {info.width}x{info.height} (WxH), too small for SSIM "
                                              f"against its truth (at least {_SSIM_MIN_SIDE}x{_SSIM_MIN_SIDE} "
                                              "pixels, its window): leave the pair out (pattern, pairs) or move its "
                                              "truth out of the sources folder (no PSNR and SSIM then)")
        except InputFileError as e:
            raise InputFileError(e.path, f"{where}: {e.problem}") from None


def source_notes(ds: Dataset, pairs: Sequence[Pair]) -> list[str]:
    """Lines for the user about a dataset's sources, from their headers: a source of several
    frames or pages (only the first is used: :func:`bafusion.io.frame_note`), a gray source
    beside a colour one (used as colour: :func:`bafusion.io.mix_note`), a CMYK source (converted
    without colour management: :func:`bafusion.io.cmyk_notes`), a source whose transparency is
    dropped (as ``bafusion fuse`` says them); and a pair's shots beyond A and B (``p1-C.png``, a
    focal stack's), which are not used."""
    from bafusion.fusion.batch import _SHOT  # fuse-dir's <name>-<letter>
    from bafusion.io import cmyk_notes, frame_note, image_info, mix_note
    from bafusion.io.info import _alpha_note

    # a third shot (p1-C.png beside p1-A and p1-B, a focal stack as fuse-dir reads it) was left
    # out without a word: the table compares the fusions of A and B only
    more: dict[str, list[str]] = {}
    names = {p.name for p in pairs}
    for stem, files in (_image_files(ds.sources).items() if ds.sources.is_dir() else ()):
        m = _SHOT.fullmatch(stem)
        if m is not None and m["letter"] not in "ABab" and m["name"] in names:
            more.setdefault(m["name"], []).extend(f.name for f in files)
    notes = []
    for p in pairs:
        infos = [image_info(p.a), image_info(p.b)]
        for line in [*map(frame_note, infos), mix_note([i.path for i in infos], [i.gray for i in infos]),
                     *cmyk_notes([p.a, p.b]), *map(_alpha_note, (p.a, p.b))]:
            if line:
                notes.append(f"dataset {ds.name!r}, pair {p.name!r}: {line}")
        if p.name in more:
            notes.append(f"dataset {ds.name!r}, pair {p.name!r}: {', '.join(sorted(more[p.name]))} not used: evaluate "
                         f"compares the fusions of two sources, {p.a.name} and {p.b.name} (fuse-dir would fuse "
                         "every shot of the stack)")
    return notes


def _check_crop(ds: Dataset, cfg: EvalConfig, pair: Pair) -> None:
    """Refuse a ``crop`` that does not fit in the figure pair's images: it failed only at the
    figures, after every pair was fused, as an internal error."""
    from bafusion.io import image_info

    assert ds.crop is not None
    top, left, side = ds.crop
    info = image_info(pair.a)
    w, h = info.width, info.height
    if top + side > h or left + side > w:
        i = next((k for k, d in enumerate(cfg.datasets) if d.name == ds.name), 0)
        raise UserError(f"evaluate.datasets[{i}].crop [{top}, {left}, {side}]: the square [top, left, side] does not "
                        f"fit in the {w}x{h} (WxH) images of the figure pair {pair.name!r} (dataset {ds.name!r}): "
                        f"top + side <= {h} and left + side <= {w} are needed")


def _check_sets(ds: Dataset, cfg: EvalConfig, pairs: Sequence[Pair]) -> None:
    """Refuse a ``sets`` prefix that matches none of the dataset's pairs (a typo, ``Savic`` for
    ``savic``): its set was left out of the tables without a word. The error lists the pairs'
    name prefixes (their part before the first ``-``) and, when ``pattern`` or ``pairs`` chose
    them, says so (the set may be one the filter left out, not a typo)."""
    for sname in ds.sets:
        if set_rows([{"pair": p.name} for p in pairs], sname):
            continue
        i = next((k for k, d in enumerate(cfg.datasets) if d.name == ds.name), 0)
        prefixes = list(dict.fromkeys(p.name.split("-")[0] for p in pairs))
        filters = []
        if ds.pattern != "*" and not (ds.sources / "index.json").is_file():
            filters.append(f"pattern {ds.pattern!r}")
        if ds.pairs:
            filters.append("pairs [" + ", ".join(ds.pairs[:5]) + (f" and {len(ds.pairs) - 5} more" if len(ds.pairs) > 5
                                                                 else "") + "]")
        chosen = f" chosen by its {' and '.join(filters)}" if filters else ""
        raise UserError(f"evaluate.datasets[{i}].sets: {sname!r} matches none of the {len(pairs)} pairs of dataset "
                        f"{ds.name!r}{chosen} (a set is a pair-name prefix, case-sensitive); their prefixes: "
                        + ", ".join(prefixes[:12]) + (f" and {len(prefixes) - 12} more" if len(prefixes) > 12 else "")
                        + (f"; leave the set out (sets) or widen {' and '.join(f.split()[0] for f in filters)} to "
                           "take its pairs" if filters else ""))


def check_dataset(ds: Dataset, cfg: EvalConfig) -> list[Pair]:
    """The pairs of ``ds`` (:func:`find_pairs`), after checking what can be checked before any
    fusion: its sources (each a readable image, A and B of one size, not smaller than the
    metrics need: :func:`_check_sources`),
    its ``figure_pair`` (and that ``crop`` fits in it), its reference metrics (a row and a value
    for every pair and peer) and its reference folder (a fused image for every pair and method). Raises
    :class:`~bafusion.errors.UserError` naming the file. A ``sets`` prefix must match a pair."""
    pairs = find_pairs(ds)
    _check_sets(ds, cfg, pairs)
    _check_sources(ds, pairs, cfg.metrics)
    fig_pair = ds.figure_pair or pairs[0].name
    if fig_pair not in {p.name for p in pairs}:
        raise UserError(f"dataset {ds.name!r}: figure_pair {fig_pair!r} is not one of its pairs")
    if cfg.figures and ds.crop is not None:
        _check_crop(ds, cfg, next(p for p in pairs if p.name == fig_pair))
    _check_peer_rows(ds, pairs, cfg.metrics)
    _check_reference_images(ds, pairs)
    return pairs


def check_datasets(cfg: EvalConfig) -> None:
    """:func:`check_dataset` for every dataset of ``cfg`` (but an empty embedded test set), so
    that a missing input of the last dataset fails before the first is fused."""
    for ds in cfg.datasets:
        if not _is_empty_testset(ds):
            check_dataset(ds, cfg)


def dataset_notes(ds: Dataset, cfg: EvalConfig, pairs: Sequence[Pair]) -> list[str]:
    """Header paragraphs of a dataset's ``table1.md``: where peers' values come from and how our
    output is stored before it is measured."""
    notes = []
    if ds.reference_metrics is not None:
        peers = read_peer_metrics(ds.reference_metrics)
        csv_methods = [m for m in ds.reference_methods if m in peers.methods]
        if csv_methods:
            missing = [q for q in cfg.metrics if q not in peers.metrics]
            notes.append(
                f"Peers known only by their metric values: {len(csv_methods)} methods from "
                f"`{peers.path.name}` (values as published, i.e. measured on their published files)"
                + (f"; the CSV has no {', '.join(missing)} (n/a)" if missing else "") + "."
            )
    by_quality: dict[int, list[str]] = {}
    for p in pairs:
        q = ds.quality_for(p.name)
        if q is not None:
            by_quality.setdefault(q, []).append(p.name)
    if by_quality:
        used = {pre: q for pre, q in ds.jpeg_quality}
        per_q = "; ".join(
            f"quality {q} on {len(names)} pair(s)"
            + (f" ({', '.join(f'`{pre}*`' for pre in sorted(used) if used[pre] == q and pre)})"
               if all(pre for pre in used if used[pre] == q) else "")
            for q, names in sorted(by_quality.items())
        )
        lossless = len(pairs) - sum(len(v) for v in by_quality.values())
        computed = [m for m in _method_order(cfg, ds) if m in cfg.methods]
        note = (
            f"**Storage.** The output of the methods computed here ({', '.join(computed)}) "
            "is measured after re-encoding it as JPEG in memory (Pillow, chroma subsampling 4:2:0): "
            f"{per_q}" + (f"; {lossless} pair(s) matched by no prefix are measured as computed" if lossless else "")
            + ". The values of the output before re-encoding are in the section *Lossless output* "
            f"and in the `{LOSSLESS}*` columns of metrics.csv."
        )
        csv_methods = set(read_peer_metrics(ds.reference_metrics).methods) if ds.reference_metrics is not None else set()
        folder = [m for m in ds.reference_methods if m not in csv_methods] if ds.reference is not None else []
        if csv_methods & set(ds.reference_methods):
            note += " The peers' values are as published, measured on their published files."
        if folder:
            note += (f" The reference methods read from the reference folder ({', '.join(folder)}) are measured "
                     "as stored, not re-encoded.")
        stored = lossless_references(ds, pairs)
        if stored:
            note += (" **Not like for like:** " + _lossless_reference_text(stored) + "; compare them with the "
                     "section *Lossless output*.")
        elif not ds.reference_jpeg_quality:
            note += " Like for like where the peers' files are JPEG at about these qualities."
        notes.append(note)
    if ds.reference_jpeg_quality:
        higher, lower = _storage_differences(ds, pairs)
        n = len(pairs)
        text = ("**Storage differs between rows** (column *Scored as*; the peers' qualities as the dataset's "
                "`reference_jpeg_quality` states them): a method's values include the loss of the files it was "
                "measured on, so compare rows stored alike.")
        if higher:
            text += (" Stored at a higher quality than our output is measured at: "
                     + ", ".join(f"{m} ({k} of {n} pairs)" for m, k in higher.items()) + ".")
        if lower:
            text += (" Stored at a lower quality: " + ", ".join(f"{m} ({k} of {n} pairs)" for m, k in lower.items()) + ".")
        if not higher and not lower:
            text += " Every peer with a stated quality is stored at the quality our output is measured at."
        if any(ds.quality_for(p.name) is not None for p in pairs):
            text += " The italic rows are the output of the methods computed here before re-encoding (lossless)."
        notes.append(text)
    return notes


def _where(ds: Dataset, names: Sequence[str], table: Sequence[str]) -> str:
    """The pairs ``names`` (of the table's pairs ``table``) in words: the sets that hold exactly
    them (``savic, tsai``), else their number."""
    group = set(names)
    sets = [s for s in ds.sets if any(n.startswith(s) for n in table) and all(n in group for n in table if n.startswith(s))]
    if sets and group == {n for n in table if any(n.startswith(s) for s in sets)}:
        return ", ".join(sets)
    return f"{len(names)} pair(s)"


def _quality_text(ds: Dataset, qualities: Mapping[str, int | None], approx: bool, none_text: str) -> str:
    """``JPEG q75 (savic, tsai), q92 (stand)`` from {pair: quality} (``~q75`` when ``approx``);
    pairs without a quality read ``none_text``."""
    groups: dict[int | None, list[str]] = {}
    for name, q in qualities.items():
        groups.setdefault(q, []).append(name)
    table = list(qualities)
    jpeg = [q for q in groups if q is not None]
    jpeg.sort(key=lambda q: table.index(groups[q][0]))
    one = len(groups) == 1
    parts = [("JPEG " if i == 0 else "") + f"{'~' if approx else ''}q{q}" + ("" if one else f" ({_where(ds, groups[q], table)})")
             for i, q in enumerate(jpeg)]
    if None in groups:
        parts.append(none_text + ("" if one else f" ({_where(ds, groups[None], table)})"))
    return ", ".join(parts)


def storage_labels(ds: Dataset, cfg: EvalConfig, pairs: Sequence[Pair]) -> dict[str, str]:
    """The *Scored as* text of each method of ``ds``'s tables over ``pairs``: how the images
    measured were stored. The methods computed here: ``JPEG q75 (savic, tsai), q92 (stand),
    re-encoded here`` (``jpeg_quality``; the sets, or a number of pairs, where qualities differ),
    or ``as computed (PNG, lossless)``; peers of the ``reference_metrics`` CSV: the quality of
    their published files as ``reference_jpeg_quality`` states it (``JPEG ~q95, published
    files``), else ``published files (quality not stated)``; methods read from the
    ``reference`` folder: the stored files' format (with the stated quality of a JPEG).

    Parameters
    ----------
    ds : Dataset
        The dataset (its ``jpeg_quality``, ``reference_jpeg_quality`` and ``sets``).
    cfg : EvalConfig
        The evaluation (the methods computed here).
    pairs : sequence of Pair
        The pairs of the table (all, or one set's).

    Returns
    -------
    dict
        Method name -> text, for every method of the dataset's tables.
    """
    from bafusion.evaluation.baselines import find_method_result

    csv_methods = set(read_peer_metrics(ds.reference_metrics).methods) if ds.reference_metrics is not None else set()
    out: dict[str, str] = {}
    for m in _method_order(cfg, ds):
        if m in cfg.methods:
            qs = {p.name: ds.quality_for(p.name) for p in pairs}
            text = _quality_text(ds, qs, False, "as computed (PNG, lossless)")
            out[m] = text + (", re-encoded here" if any(q is not None for q in qs.values()) else "")
        elif m in csv_methods:
            qs = {p.name: ds.reference_quality_for(m, p.name) for p in pairs}
            out[m] = (_quality_text(ds, qs, True, "quality not stated") + ", published files"
                      if any(q is not None for q in qs.values()) else "published files (quality not stated)")
        elif ds.reference is not None:
            kinds = {}
            for p in pairs:
                f = find_method_result(ds.reference, m, p.name)
                suffix = "" if f is None else f.suffix.lower()
                q = ds.reference_quality_for(m, p.name)
                kinds[p.name] = (f"{suffix[1:].upper()}, lossless" if f is not None and stored_lossless(f)
                                 else f"JPEG ~q{q}" if q is not None else "JPEG" if suffix in (".jpg", ".jpeg") else "?")
            groups: dict[str, list[str]] = {}
            for name, k in kinds.items():
                groups.setdefault(k, []).append(name)
            table = list(kinds)
            out[m] = "stored " + (next(iter(groups)) if len(groups) == 1 else ", ".join(
                f"{k} ({_where(ds, v, table)})" for k, v in groups.items()))
    return out


def _storage_differences(ds: Dataset, pairs: Sequence[Pair]) -> tuple[dict[str, int], dict[str, int]]:
    """Per peer with a stated ``reference_jpeg_quality``: the number of pairs whose published
    file is stored at a higher quality than the one our output is measured at (a lossless
    measurement counts as above every quality), and the number stored at a lower one."""
    higher: dict[str, int] = {}
    lower: dict[str, int] = {}
    for m in ds.reference_methods:
        for p in pairs:
            theirs, ours = ds.reference_quality_for(m, p.name), ds.quality_for(p.name)
            if theirs is None:
                continue
            ours_level = 101 if ours is None else ours
            if theirs > ours_level:
                higher[m] = higher.get(m, 0) + 1
            elif theirs < ours_level:
                lower[m] = lower.get(m, 0) + 1
    return higher, lower


LOSSLESS_SUFFIXES: frozenset[str] = frozenset({".png", ".apng", ".tif", ".tiff", ".bmp", ".dib", ".webp", ".gif",
                                                ".ppm", ".pgm", ".pbm", ".pnm", ".pfm", ".qoi", ".tga", ".sgi", ".rgb",
                                                ".bw", ".pcx"})
"""Suffixes of reference results that may be lossless files (:func:`lossless_references`); a
WebP is one when it is VP8L-coded, a TIFF when uncompressed or coded losslessly (:func:`stored_lossless`).
JPEG, JPEG 2000 and AVIF files are taken as lossy: their lossless modes cannot be told from the
file's header. A lossless JPEG 2000 file's COD marker says the reversible 5/3 wavelet and its QCD
no quantization, but so do a rate- or dB-limited one's (Pillow's ``quality_layers`` with its
default reversible transform truncates the same 5/3 code stream: lossy, headers alike); a lossless
AVIF is told by its AV1 frame header's quantizer, not by its boxes (and Pillow writes none: even
``quality=100, subsampling="4:4:4"`` differs by up to 3 levels)."""


def _webp_lossless(path: Path) -> bool:
    """Whether a WebP file is lossless: its image data is a ``VP8L`` chunk (lossy data is ``VP8 ``,
    with an ``ALPH`` chunk beside it for an alpha channel). The RIFF chunks are walked, an
    animation's ``ANMF`` frames entered: the first image chunk tells."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
                return False
            while True:
                chunk = fh.read(8)
                if len(chunk) < 8:
                    return False
                fourcc, size = chunk[:4], int.from_bytes(chunk[4:], "little")
                if fourcc == b"VP8L":
                    return True
                if fourcc == b"VP8 ":
                    return False
                # an animation frame: its 16-byte header, then the frame's own chunks
                fh.seek(16 if fourcc == b"ANMF" else size + (size & 1), os.SEEK_CUR)
    except OSError:
        return False


#: TIFF compression codes (tag 259) that store the pixels exactly: none, CCITT RLE / T.4 / T.6,
#: LZW, Adobe Deflate, JBIG, CCIRLEW, PackBits, ThunderScan, Deflate, LZMA, Zstandard (both codes),
#: PNG. JPEG (old and new), JPEG 2000, JPEG XL, JPEG XR, WebP, LERC, SGILog and other codes count
#: as lossy (where such a coding has a lossless mode, it is not told apart).
_TIFF_LOSSLESS_CODES = frozenset({1, 2, 3, 4, 5, 8, 9, 10, 32771, 32773, 32809, 32946, 34925, 34926, 50000, 34933})


def _tiff_compression(path: Path) -> int | None:
    """The compression code (tag 259) of a TIFF's first image, read from its header and first
    IFD alone (classic and BigTIFF); 1 (none) when the tag is absent; None for a file that is
    no TIFF or is cut short."""
    import struct

    try:
        with open(path, "rb") as fh:
            head = fh.read(16)
            order = {b"II": "<", b"MM": ">"}.get(head[:2])
            if order is None or len(head) < 8:
                return None
            version = struct.unpack(order + "H", head[2:4])[0]
            if version == 42:
                offset, count_fmt, entry_size, value_at = struct.unpack(order + "I", head[4:8])[0], "H", 12, 8
            elif version == 43 and len(head) == 16:  # BigTIFF
                offset, count_fmt, entry_size, value_at = struct.unpack(order + "Q", head[8:16])[0], "Q", 20, 12
            else:
                return None
            fh.seek(offset)
            raw = fh.read(struct.calcsize(count_fmt))
            if len(raw) < struct.calcsize(count_fmt):
                return None
            count = struct.unpack(order + count_fmt, raw)[0]
            entries = fh.read(min(count, 4096) * entry_size)
            for i in range(0, len(entries) - entry_size + 1, entry_size):
                tag, kind = struct.unpack(order + "HH", entries[i:i + 4])
                if tag == 259:
                    value = entries[i + value_at:i + entry_size]
                    if kind == 3:  # SHORT
                        return struct.unpack(order + "H", value[:2])[0]
                    if kind == 4:  # LONG
                        return struct.unpack(order + "I", value[:4])[0]
                    return None
            return 1 if len(entries) == min(count, 4096) * entry_size else None
    except (OSError, OverflowError, ValueError):
        return None


def stored_lossless(path: str | os.PathLike[str]) -> bool:
    """Whether a stored result holds its pixels without a lossy coding: a PNG, BMP, netpbm, QOI,
    TGA, SGI or PCX file; a TIFF whose first image is uncompressed or coded losslessly (LZW, Deflate,
    PackBits, ...: its compression tag, read from the header; JPEG-, JPEG 2000-, WebP-compressed ones
    count as lossy); a WebP coded lossless (``VP8L``, told from
    its RIFF chunks, not its name: ``.webp`` is either); a GIF, whose LZW coding is lossless (a
    colour result stored as GIF is limited to its palette of at most 256 colours, a loss of its
    own, but no JPEG-like loss: it is counted, as the gray results that GIF stores exactly).
    JPEG, JPEG 2000 and AVIF files count as lossy (their lossless modes cannot be told from the
    header: :data:`LOSSLESS_SUFFIXES`).

    Parameters
    ----------
    path : str or os.PathLike
        The file.

    Returns
    -------
    bool
        True for a lossless file.

    Examples
    --------
    >>> stored_lossless("result.jpg")
    False
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in LOSSLESS_SUFFIXES:
        return False
    if suffix == ".webp":
        return _webp_lossless(p)
    if suffix in (".tif", ".tiff"):  # the first image's compression tag, read from the header alone
        code = _tiff_compression(p)
        return code is None or code in _TIFF_LOSSLESS_CODES  # unreadable (None): said by the reader, not here
    return True


def lossless_references(ds: Dataset, pairs: Sequence[Pair]) -> dict[str, int]:
    """With ``jpeg_quality``: per method read from the ``reference`` folder, the number of the
    re-encoded pairs (:meth:`Dataset.quality_for`) whose stored result is a lossless file
    (:func:`stored_lossless`: PNG, BMP, GIF, lossless WebP, TIFF uncompressed or coded losslessly, ...). Those results are measured as stored while the output of the
    methods computed here is measured after JPEG re-encoding: not like for like. Methods with
    no such pair are left out."""
    from bafusion.evaluation.baselines import find_method_result

    if ds.reference is None or not ds.jpeg_quality:
        return {}
    csv_methods = set(read_peer_metrics(ds.reference_metrics).methods) if ds.reference_metrics is not None else set()
    out: dict[str, int] = {}
    for m in ds.reference_methods:
        if m in csv_methods:
            continue
        k = 0
        for p in pairs:
            if ds.quality_for(p.name) is not None:
                f = find_method_result(ds.reference, m, p.name)
                k += f is not None and stored_lossless(f)
        if k:
            out[m] = k
    return out


def _lossless_reference_text(stored: Mapping[str, int]) -> str:
    return ("the stored results of " + ", ".join(f"{m} ({k} pair(s))" for m, k in stored.items())
            + " are lossless files (e.g. PNG, TIFF, BMP, GIF, lossless WebP), measured as stored, without the JPEG loss that the "
            "output of the methods computed here is measured with (jpeg_quality)")


def _fig4_full_size(ds: Dataset, cfg: EvalConfig, pair: Pair, out: Path, shown: Mapping[str, Any]) -> str:
    """Where Fig. 4's images are at full size, for the line under a much shrunk figure: the
    source files, ``<dataset folder>/fused/<method>/<pair>.png`` of the methods computed here
    (with ``evaluate.save_fused``) and the reference folder's files of the others. Names only,
    no absolute path: the figure's bytes do not depend on where the project lies."""
    places = [f"the sources {pair.a.name} and {pair.b.name}"]
    if cfg.save_fused and any(m in cfg.methods for m in shown):
        places.append(f"{out.name}/fused/<method>/{pair.name}.png for the methods computed here")
    if ds.reference is not None and any(m not in cfg.methods for m in shown):
        places.append(f"the reference results in {ds.reference.name}/")
    return "the images at full size are " + (", ".join(places[:-1]) + " and " + places[-1] if len(places) > 1
                                               else places[0])


def evaluate_dataset(
    ds: Dataset, cfg: EvalConfig, out: Path, nets: Any = None, fusion_params: Any = None, log: Any = print,
    checked: bool = False, progress: bool | None = None, provenance: Mapping[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], list[str]]:
    """Evaluate one dataset into ``out`` (its folder): metrics.csv, means.csv (and means-sets.csv
    with ``sets``), table1.md, figures/ and fused/. Returns the rows and the method order. Its
    inputs are checked first (:func:`check_dataset`): a missing reference image or peer value
    fails before any pair is fused; ``checked`` says the caller has checked them (each source
    is decoded by the check: once is enough); ``progress`` as :func:`evaluate_pair` takes it.
    ``provenance``: what made the output (as :func:`run_evaluation` records it in metrics.json),
    said in a line under table1.md's title."""
    from bafusion.evaluation.figures import save_dataset_figures

    pairs = find_pairs(ds) if checked else check_dataset(ds, cfg)
    for note in source_notes(ds, pairs):  # before the work, where they are not lost among the pairs' lines
        print(f"bafusion evaluate: {note}", file=sys.stderr)
    unlisted = _unlisted_reference_folders(ds)
    if unlisted:  # one's own method's folder beside the paper's six: left out of every table in silence
        print(f"bafusion evaluate: note: dataset {ds.name!r}: {', '.join(unlisted)} in {ds.reference} not compared: "
              "the methods read from the reference folder are the dataset's reference_methods (the default: the "
              "paper's six); list them in its reference_methods to compare them", file=sys.stderr)
    stored = lossless_references(ds, pairs)
    if stored:
        print(f"bafusion evaluate: warning: dataset {ds.name!r}: not like for like: {_lossless_reference_text(stored)}; "
              "table1.md says so", file=sys.stderr)
    fig_pair = ds.figure_pair or pairs[0].name
    methods = _method_order(cfg, ds)
    csv_peers = set(read_peer_metrics(ds.reference_metrics).methods) if ds.reference_metrics is not None else set()
    rows: list[dict[str, Any]] = []
    for pair in pairs:
        prow, fused, (a, b) = evaluate_pair(ds, pair, cfg, nets, fusion_params, progress)
        rows.extend(prow)
        if cfg.save_fused:
            from bafusion.io import write_image

            quality = ds.quality_for(pair.name)
            for m, f in fused.items():
                if m in cfg.methods:  # computed here; the reference results are stored already
                    write_image(out / "fused" / m / f"{pair.name}.png", f)
                    if quality is not None:  # the re-encoded image that was measured
                        with atomic_file(out / "fused" / m / f"{pair.name}.jpg") as tmp:
                            tmp.write_bytes(jpeg_reencode(f, quality)[1])
        if cfg.figures and pair.name == fig_pair:
            shown = {m: fused[m] for m in methods if m in fused}
            save_dataset_figures(out / "figures", pair.name, a, b, shown, cfg.alpha, ds.crop,
                                 full_size=_fig4_full_size(ds, cfg, pair, out, shown))
        log(f"{ds.name}/{pair.name}: " + ", ".join(
            f"{r['method']} " + " ".join(f"{q}={_fmt(q, r[q])}" for q in cfg.metrics)  # NaN: n/a, as the tables
            for r in prow if r["method"] not in csv_peers))
    rows.sort(key=lambda r: ([p.name for p in pairs].index(r["pair"]), methods.index(r["method"])))
    extra = [q for q in TRUTH_METRICS if _has_values(rows, methods, q)]
    values = [*cfg.metrics, *extra]
    lossless = [f"{LOSSLESS}{q}" for q in values if _has_values(rows, methods, f"{LOSSLESS}{q}")]
    storage = ["jpeg_quality"] if lossless else []
    write_text(out / "metrics.csv", rows_to_csv(rows, ["pair", "method", *values, *storage, *lossless]))
    # a mean over fewer pairs than the method has (NaN on the others): its count in n_<column>
    # (columns only for such means, so that the files are as before without them)
    means_rows = []
    for m in methods:
        mr: dict[str, Any] = {"method": m}
        for q in (*values, *lossless):
            mr[q] = mean_values(rows, [m], q)[m]
        means_rows.append(mr)
    cols = [*values, *lossless]
    counted = _partial_columns(rows, methods, cols)
    for mr in means_rows:
        mr.update({f"n_{q}": _defined_pairs(rows, mr["method"], q) for q in counted})
    write_text(out / "means.csv", rows_to_csv(means_rows, ["method", *cols, *(f"n_{q}" for q in counted)]))
    if ds.sets:
        set_means = []
        per_set = {sname: set_rows(rows, sname) for sname in _set_names(ds.sets)}
        counted = [q for q in cols if any(q in _partial_columns(sr, methods, cols) for sr in per_set.values())]
        for sname, sr in per_set.items():
            n = len({r["pair"] for r in sr})
            for m in methods:
                set_means.append({"set": sname, "method": m, "n": n, **{q: mean_values(sr, [m], q)[m] for q in cols},
                                  **{f"n_{q}": _defined_pairs(sr, m, q) for q in counted}})
        write_text(out / "means-sets.csv",
                   rows_to_csv(set_means, ["set", "method", "n", *cols, *(f"n_{q}" for q in counted)]))
    labels = None
    if ds.jpeg_quality or ds.reference_jpeg_quality:  # storage differs between rows: say it in each
        labels = {sname: storage_labels(ds, cfg, [p for p in pairs if p.name in {r["pair"] for r in set_rows(rows, sname)}])
                  for sname in _set_names(ds.sets)}
    notes = dataset_notes(ds, cfg, pairs)
    if provenance is not None:
        notes.insert(0, _provenance_line(provenance))
    write_text(out / "table1.md", table1_document(ds.name, rows, methods, [*cfg.metrics], ds.sets, notes, labels))
    return rows, methods


def _defined_pairs(rows: Rows, m: str, q: str) -> int:
    """The number of ``m``'s pairs in ``rows`` with a finite value of column ``q``."""
    return defined_counts(rows, [m], q)[m]


def _n_defined(rows: Rows, m: str, qs: Sequence[str]) -> dict[str, int]:
    """{column: number of pairs} for the columns ``qs`` on which ``m``'s mean is over fewer than
    its pairs in ``rows`` (for ``lossless_*``: its pairs with lossless values) but not over none:
    the means that :func:`partial_mark` marks. Empty when every mean is over all pairs."""
    own = [r for r in rows if r["method"] == m]
    out = {}
    for q in qs:
        base = own if not q.startswith(LOSSLESS) else [
            r for r in own if any(_finite(v) for c, v in r.items() if c.startswith(LOSSLESS))]
        k = _defined_pairs(base, m, q)
        if partial_mark(k, _npairs(base)):
            out[q] = k
    return out


def _partial_columns(rows: Rows, methods: Sequence[str], qs: Sequence[str]) -> list[str]:
    """The columns of ``qs`` (in that order) on which some method's mean is partial
    (:func:`_n_defined`): means.csv gives their ``n_<column>``."""
    cols = {q for m in methods for q in _n_defined(rows, m, qs)}
    return [q for q in qs if q in cols]


def _comparable(rows: Rows, methods: Sequence[str], q: str) -> set[str]:
    """The methods whose finite mean of ``q`` over ``rows`` is over the most pairs: the means that
    may be bold (:func:`best_methods`). The others (NaN on some pairs) are left out of the MLflow
    metrics and the plots CSV, which cannot carry their count.

    A method's mean is finite exactly when it has a defined value, so the counts decide."""
    counts = defined_counts(rows, methods, q)
    full = max(counts.values(), default=0)
    return {m for m, k in counts.items() if k == full and k > 0}


def _set_comparable(ds: Dataset, rows: Rows, methods: Sequence[str], metrics: Sequence[str]) -> dict[str, dict[str, set[str]]]:
    """:func:`_comparable` on each of ``ds``'s sets (``{set: {metric: methods}}``), once per
    dataset rather than once for each of our variants."""
    out: dict[str, dict[str, set[str]]] = {}
    for sname in ds.sets:
        sr = set_rows(rows, sname)
        out[sname] = {q: _comparable(sr, methods, q) for q in metrics}
    return out


def _json_value(v: float) -> float | None:
    return float(v) if math.isfinite(v) else None


def check_report_paths(
    cfg: EvalConfig,
    out: str | os.PathLike[str],
    report: str | os.PathLike[str] | None = None,
    plots: str | os.PathLike[str] | None = None,
) -> None:
    """Refuse, before any work, a ``report`` or ``plots`` file that would overwrite an input
    or a file the evaluation writes into ``out``.

    Raises :class:`~bafusion.errors.UserError` when either is a dataset's input (a source or
    reference image, its reference metrics), lies inside a dataset's sources or reference
    folder, or names a file the evaluation writes into ``out`` (``metrics.json``, the record of
    a report and plots inside it, ``evaluate-record.json``, anything in ``<out>/<dataset>/``).
    ``report`` may be ``<out>/metrics.json`` (then that file, ``provenance`` included; elsewhere
    the report is ``metrics.json`` without its ``provenance``)."""
    from bafusion.preflight import OUTPUT_RECORDS, check_not_input, same_file

    folders = [(ds, p) for ds in cfg.datasets for p in (ds.sources, ds.reference) if p is not None]
    files = [p for ds in cfg.datasets if ds.reference_metrics is not None for p in (ds.reference_metrics,)]
    outp = Path(out)
    for value, flag in ((report, "--report"), (plots, "--plots")):
        if not value:
            continue
        p, shown = Path(value), os.fspath(value)
        what = f"{flag} file"
        check_not_input(p, files, what)
        for ds, f in folders:
            if _inside(f, p):
                if os.path.lexists(p):  # a source, reference image or index of the dataset
                    check_not_input(p, [p.resolve()], what)
                raise UserError(f"{shown}: the {what} lies inside the input folder {f} of dataset {ds.name!r}; "
                                "inputs are never overwritten: choose another name")
        if report is value and same_file(p, outp / "metrics.json"):
            continue  # the report is a copy of <out>/metrics.json
        for written in ("metrics.json", OUTPUT_RECORDS["metrics.json"]):  # the record of report and plots in out
            if _inside(outp / written, p):
                raise UserError(f"{shown}: the {what} is {outp / written}, a file evaluate writes: choose another name")
        for ds in cfg.datasets:
            if _inside(outp / ds.name, p):
                raise UserError(f"{shown}: the {what} lies in {outp / ds.name}, the folder evaluate writes for "
                                f"dataset {ds.name!r}: choose another name")


def _inside(folder: Path, p: Path) -> bool:
    """Whether ``p`` is ``folder`` or lies inside it (absolute, then resolved, paths)."""
    try:
        f, q = Path(os.path.abspath(folder)), Path(os.path.abspath(p))
        if f == q or f in q.parents:
            return True
        f, q = folder.resolve(), p.resolve()
    except (OSError, RuntimeError):
        return False
    return f == q or f in q.parents


def run_evaluation(
    cfg: EvalConfig,
    out: str | os.PathLike[str],
    nets: Any = None,
    fusion_params: Any = None,
    run_params: Mapping[str, Any] | None = None,
    report: str | os.PathLike[str] | None = None,
    plots: str | os.PathLike[str] | None = None,
    log: Any = print,
    checked: bool = False,
    progress: bool | None = None,
    model: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Evaluate every dataset of ``cfg`` into ``out`` (replaced whole on success), log an MLflow
    run ``evaluate`` with the means, our wins, ranks and ``rank_of`` and each dataset's ``pairs``
    as metrics (``metrics.json``'s flattened names; :data:`COUNTS_TAG` names the counts) and the
    tables and figures as artifacts, and
    write the metrics JSON (``out/metrics.json``; ``report``, the DVC metrics file, gets it without
    its ``provenance``: numbers only) and the means of all
    methods as a CSV for DVC plots (``plots``). Returns the metrics document. A mean over fewer
    pairs than another method's (the metric NaN on some pairs; marked ``(n=k/N)``, never bold,
    in the tables) is left out of the MLflow metrics and the plots CSV (an empty cell): neither
    can carry its count, and as a bare number it would rank or plot as if comparable. A mean
    counting exact pairs as :data:`INF_PSNR_IN_MEANS` (the tables' :data:`CAPPED_MARK`) stays in
    both; the plots CSV's ``n_inf_PSNR`` (:data:`INF_COUNT_PREFIX`) and the run's tag
    :data:`CAPPED_TAG` say how many pairs it counts so.

    Raises :class:`~bafusion.errors.UserError` before any work when ``out`` is, or holds, a
    dataset's sources or references, or the working directory, and when a dataset's inputs fail
    :func:`check_datasets` -- unless ``checked`` says the caller ran it on ``cfg`` already (the
    command does, before loading the nets): each source is decoded by the check, once.
    ``progress``: our fusion's progress bar, as :func:`evaluate_pair` takes it (False:
    ``--no-progress``). ``model``: the model the nets were named by, as given (``--model DIR``,
    a shipped model's name; None: the nets' files, or nets built in memory), recorded with the
    nets' files and sha256, the fusion parameters and bafusion's version under ``provenance``
    in ``out/metrics.json`` (:func:`evaluation_provenance`; not in ``report``, numbers only,
    unless ``report`` is ``out/metrics.json`` itself) and in a line of each ``table1.md``."""
    from bafusion import tracking
    from bafusion.preflight import OUTPUT_MARKERS, check_output_dir, recorded_outputs, same_file, write_output_record

    out = Path(out)
    # ``out`` is replaced whole: refuse before any work when it is, or holds, a dataset's
    # sources, reference images or reference metrics, or files that are no earlier output of
    # evaluate (they would be deleted with it), as the command does: report and plots, written
    # after it is replaced, are its own
    inputs = [p for ds in cfg.datasets for p in (ds.sources, ds.reference, ds.reference_metrics) if p is not None]
    check_output_dir(out, inputs, replaced=True, marker=OUTPUT_MARKERS["evaluate"], what="evaluation output folder",
                     own=[p for p in (report, plots) if p])
    check_report_paths(cfg, out, report, plots)
    # an earlier run's --report/--plots inside out (its record vouches for them): replaced with out
    earlier = [rel for rel in (recorded_outputs(out, OUTPUT_MARKERS["evaluate"]) or []) if out.is_dir()
               and not any(same_file(out / rel, Path(p)) for p in (report, plots) if p)]
    if not checked:
        check_datasets(cfg)  # every dataset's inputs before the first fusion
    doc: dict[str, Any] = {}
    plot_rows: list[dict[str, Any]] = []
    all_means: dict[str, float] = {}
    logged: dict[str, None] = {}  # the metric names of all_means' keys (QMI, rank.QMI, wins.QMI), in order
    counts: dict[str, float] = {}  # Table 1's counts with no direction (<dataset>.pairs, <dataset>.Ours.rank_of.QMI)
    counted: dict[str, None] = {}  # their names (pairs, rank_of.QMI), in order
    capped: dict[str, int] = {}  # all_means' keys whose mean counts exact pairs as 100 dB: how many
    provenance = evaluation_provenance(cfg, nets, fusion_params, model)
    with tracking.stage_run("evaluate", run_params or {"evaluate": _config_dict(cfg)}) as run:
        if provenance["nets"] is not None:  # which weights made Ours' rows, their sha256 and training run
            tracking.log_nets(run, provenance["nets"])
        with atomic_dir(out) as tmp:
            for ds in cfg.datasets:
                if _is_empty_testset(ds):
                    # data.holdout_* 0: every pair went to training, the embedded test set is empty
                    log(f"dataset {ds.name!r}: {ds.sources / 'index.json'} lists no pairs (nothing was held out: "
                        "data.holdout_foregrounds / holdout_backgrounds); not evaluated")
                    doc[ds.name] = {"pairs": 0}
                    continue
                rows, methods = evaluate_dataset(ds, cfg, tmp / ds.name, nets, fusion_params, log, checked=True,
                                                 progress=progress, provenance=provenance)
                qs = [*cfg.metrics, *(q for q in TRUTH_METRICS if _has_values(rows, methods, q))]
                entry: dict[str, Any] = {"pairs": len({r["pair"] for r in rows})}
                counts[f"{ds.name}.pairs"] = float(entry["pairs"])
                counted["pairs"] = None
                comparable = {q: _comparable(rows, methods, q) for q in qs}
                set_comparable = _set_comparable(ds, rows, methods, cfg.metrics)
                for m in methods:
                    means = {q: mean_values(rows, [m], q)[m] for q in qs}
                    for q, v in means.items():
                        if math.isfinite(v) and m in comparable[q]:
                            all_means[f"{ds.name}.{m}.{q}"] = v
                            logged[q] = None
                    # a mean over fewer pairs than another method's (never bold in the tables):
                    # left out (an empty cell, which the dots template drops), not a dot that
                    # could stand best; means.csv and table1.md give it with its count
                    # a mean counting exact pairs as INF_PSNR_IN_MEANS (the tables' †): how many, in
                    # n_inf_<metric> (always for PSNR: a column of its own, not a mark in the number)
                    exact = {q: _inf_pairs(rows, m, q) for q in means}
                    plot_rows.append({"method": f"{ds.name}/{m}",
                                      **{q: v if m in comparable[q] else float("nan") for q, v in means.items()},
                                      **{f"{INF_COUNT_PREFIX}{q}": k if m in comparable[q] else None
                                         for q, k in exact.items() if k or q == "PSNR"}})
                    capped.update({f"{ds.name}.{m}.{q}": k for q, k in exact.items()
                                   if k and f"{ds.name}.{m}.{q}" in all_means})
                    if m in (OURS, OURS_INITIAL):
                        entry[m] = {q: _json_value(v) for q, v in means.items()}
                        partial = _n_defined(rows, m, qs)
                        if partial:  # means over fewer pairs (NaN on the others): over how many
                            entry[m]["n_defined"] = partial
                        # Ours: the wins of Table 1 (without the ablation variant); Ours-initial:
                        # those of the ablation table (all methods)
                        rivals = _table1_methods(methods) if m == OURS else methods
                        entry[m]["wins"] = {q: count_wins(rows, rivals, q)[m] for q in cfg.metrics}
                        for q, k in entry[m]["wins"].items():  # Table 1's win counts, as in metrics.json
                            all_means[f"{ds.name}.{m}.wins.{q}"] = float(k)
                            logged[f"wins.{q}"] = None
                        _add_ranks_and_sets(entry[m], ds, rows, methods, m, cfg.metrics, all_means, logged,
                                            set_comparable)
                        for q, n in entry[m].get("rank_of", {}).items():  # out of how many methods
                            if n is not None:
                                counts[f"{ds.name}.{m}.rank_of.{q}"] = float(n)
                                counted[f"rank_of.{q}"] = None
                doc[ds.name] = entry
            write_text(tmp / "metrics.json", json.dumps({**doc, EVALUATE_PROVENANCE: provenance}, indent=2,
                                                        sort_keys=True) + "\n")
        written: list[str] = []  # after out: a full disk was said only of the file that failed
        try:
            # the DVC metrics file: numbers only (each is a column of dvc exp show), no provenance;
            # --report out/metrics.json is that file, written whole above
            if report:
                if not same_file(Path(report), out / "metrics.json"):
                    write_text(report, json.dumps(doc, indent=2, sort_keys=True) + "\n")
                written.append(os.fspath(report))
            if plots:
                qs_all: list[str] = []
                for r in plot_rows:
                    qs_all += [k for k in r if k != "method" and k not in qs_all]
                qs_all.sort(key=lambda k: k.startswith(INF_COUNT_PREFIX))  # the counts after the means
                write_text(plots, rows_to_csv(plot_rows, ["method", *qs_all]))
        except OSError as e:
            lost = [os.fspath(p) for p in (report, plots) if p and os.fspath(p) not in written]
            copy = " (its metrics.json holds the report's numbers)" if report and not written else ""
            raise OSError(e.errno, f"{e.strerror or e}: {' and '.join(lost)} not written; {out} was written whole{copy}"
                                   + (f", as was {written[0]}" if written else ""), e.filename or lost[0], None,
                          e.filename2) from e
        # report and plots inside out: recorded, so that a rerun knows them for its own
        write_output_record(out, OUTPUT_MARKERS["evaluate"], [p for p in (report, plots) if p])
        for rel in earlier:
            log(f"{out / rel}: written by an earlier evaluate into {out} (--report or --plots), not asked for now: "
                "removed with the folder it replaced")
        for key, value in metric_directions(logged).items():
            run.set_tag(key, value)
        if counted:  # the metrics with no direction, named as the direction tags name theirs
            run.set_tag(COUNTS_TAG, ", ".join(counted))
        if capped:
            run.set_tag(CAPPED_TAG, json.dumps(capped, sort_keys=True))
        to_log, renamed = _mlflow_metric_names({**all_means, **counts})
        if renamed:
            _tag_renamed(run, renamed)
        run.log_metrics(to_log)
        run.log_artifact(out / "metrics.json")
        for ds in cfg.datasets:
            d = out / ds.name
            if not d.is_dir():  # an empty test set, not evaluated
                continue
            for name in ("table1.md", "metrics.csv", "means.csv"):
                run.log_artifact(d / name, f"evaluation/{ds.name}")
            figs = d / "figures"
            if figs.is_dir():
                for p in sorted(figs.glob("*.png")):
                    run.log_artifact(p, f"evaluation/{ds.name}/figures")
    return doc


def evaluation_provenance(cfg: EvalConfig, nets: Any = None, fusion_params: Any = None,
                          model: str | os.PathLike[str] | None = None) -> dict[str, Any]:
    """What makes an evaluation's output, as ``metrics.json`` records it under ``provenance``
    (:func:`run_evaluation`): JSON values, no clock, the paths as given (a relative one stays
    relative, so that the pipeline's ``data/evaluation`` is the same in every clone).

    Parameters
    ----------
    cfg
        The evaluation's configuration: the nets and fusion parameters count only when it
        computes one of our variants (``Ours``, ``Ours-initial``).
    nets
        The :class:`~bafusion.fusion.FusionNets` that make our variants, or None.
    fusion_params
        Their :class:`~bafusion.fusion.FusionParams`, or None.
    model
        The model the nets were named by, as given (``--model DIR``, a shipped model's name), or
        None (the nets' files were given, or the nets were built in memory).

    Returns
    -------
    dict
        ``bafusion`` (the version), ``model`` (as given, or None), ``nets`` (per role
        ``initial`` and ``boundary``: ``file`` as loaded, ``""`` for nets built in memory,
        ``sha256`` of the file, which the model's ``.json`` records as ``weights_sha256``, else
        of the weights, and ``patch``; :func:`bafusion.fusion.batch.model_identity`), ``fuse``
        (every fusion parameter) and ``fuse_changed`` (those that differ from the defaults,
        ``{}`` for none); the last four None when no variant of ours is computed.

    Examples
    --------
    >>> evaluation_provenance(parse_config({"methods": ["Laplacian"]}))["nets"] is None
    True
    """
    from bafusion._version import __version__

    doc: dict[str, Any] = {"bafusion": __version__, "model": None, "nets": None, "fuse": None, "fuse_changed": None}
    if OURS not in cfg.methods and OURS_INITIAL not in cfg.methods:
        return doc
    if model is not None:
        doc["model"] = os.fspath(model)
    if hasattr(nets, "sources"):  # FusionNets
        from bafusion.fusion.batch import model_identity

        doc["nets"] = model_identity(nets)
    if fusion_params is not None:
        from bafusion.fusion.params import FusionParams

        given = json.loads(json.dumps(asdict(fusion_params)))
        defaults_ = json.loads(json.dumps(asdict(FusionParams())))
        doc["fuse"] = given
        doc["fuse_changed"] = {k: v for k, v in given.items() if defaults_.get(k) != v}
    return doc


def _provenance_line(prov: Mapping[str, Any]) -> str:
    """The line of ``table1.md`` that says what made it (:func:`evaluation_provenance`)."""
    text = f"**Made by** bafusion {prov['bafusion']}"
    nets = prov.get("nets")
    if nets is not None:
        text += f"; {OURS}: " + (f"model `{prov['model']}`, " if prov.get("model") is not None else "") + "nets " + ", ".join(
            f"{role} " + (f"`{n['file']}`" if n.get("file") else "(built in memory, sha256 of the weights)")
            + f" (sha256 `{n['sha256']}`)" for role, n in nets.items())
    changed = prov.get("fuse_changed")
    if changed is not None:
        text += ("; fusion parameters: the defaults" if not changed else
                 "; fusion parameters: the defaults but " + ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(changed.items())))
    return text + f" (metrics.json, `{EVALUATE_PROVENANCE}`)."


def metric_directions(names: Iterable[str]) -> dict[str, str]:
    """The MLflow tags that say which way each metric the run logged is better: ``higher_is_better``
    and ``lower_is_better``, comma-separated metric names; a direction none of them has is left out.

    ``names`` are the names the run's metric keys end in: a metric (``QMI`` of
    ``<dataset>.<method>.QMI`` and ``<dataset>.<set>.<method>.QMI``; lower is better for
    :data:`LOWER_IS_BETTER`), and our rank on it (``rank.QMI`` of ``<dataset>.<method>.rank.QMI``:
    1 is the best, so lower is better). Only the logged names: PSNR, SSIM and DM_acc where a
    dataset has a truth and a method has a value."""
    names = list(dict.fromkeys(names))

    def lower(q: str) -> bool:
        return q in LOWER_IS_BETTER or q.startswith("rank.")

    tags = {"higher_is_better": ", ".join(q for q in names if not lower(q)),
            "lower_is_better": ", ".join(q for q in names if lower(q))}
    return {k: v for k, v in tags.items() if v}


def _is_empty_testset(ds: Dataset) -> bool:
    """An embedded test set (``index.json``) that lists no pairs: made with nothing held out."""
    if ds.pairs or not (ds.sources / "index.json").is_file():
        return False
    from bafusion.fusion.testset import read_pair_index

    return not read_pair_index(ds.sources, allow_empty=True)


def _add_ranks_and_sets(
    entry: dict[str, Any], ds: Dataset, rows: Rows, methods: Sequence[str], m: str,
    metrics: Sequence[str], all_means: dict[str, float], logged: dict[str, None],
    comparable: dict[str, dict[str, set[str]]] | None = None,
) -> None:
    """metrics.json of one of our variants: its rank among Table 1's methods (``rank``, out of
    ``rank_of``), per set (``sets``: means and ranks) and its lossless means (``lossless``).
    The ranks and the per-set means go into ``all_means`` too, their names into ``logged``;
    ``comparable`` is :func:`_set_comparable` (computed here when not given)."""
    if comparable is None:
        comparable = _set_comparable(ds, rows, methods, metrics)
    rivals = _rank_rivals(methods, m)
    if len(rivals) > 1:
        ranks = {q: rank_of(rows, rivals, q, m) for q in metrics}
        entry["rank"] = {q: k for q, (k, _) in ranks.items()}
        entry["rank_of"] = {q: n for q, (_, n) in ranks.items()}
        for q, (k, _) in ranks.items():
            if k is not None:
                all_means[f"{ds.name}.{m}.rank.{q}"] = float(k)
                logged[f"rank.{q}"] = None
    lossless = _lossless_rows([r for r in rows if r["method"] == m], metrics)
    if lossless:
        entry["lossless"] = {q: _json_value(mean_values(lossless, [m], q)[m]) for q in metrics}
        if _n_defined(lossless, m, metrics):
            entry["lossless"]["n_defined"] = _n_defined(lossless, m, metrics)
    if ds.sets:
        entry["sets"] = {}
        for sname in ds.sets:
            sr = set_rows(rows, sname)
            if not sr:
                continue
            se: dict[str, Any] = {"pairs": len({r["pair"] for r in sr})}
            for q in metrics:
                v = mean_values(sr, [m], q)[m]
                se[q] = _json_value(v)
                if math.isfinite(v) and m in comparable[sname][q]:  # not a mean over fewer pairs
                    all_means[f"{ds.name}.{sname}.{m}.{q}"] = v
                    logged[q] = None
            if _n_defined(sr, m, metrics):
                se["n_defined"] = _n_defined(sr, m, metrics)
            if len(rivals) > 1:
                se["rank"] = {q: rank_of(sr, rivals, q, m)[0] for q in metrics}
            sl = set_rows(lossless, sname)
            if sl:
                se["lossless"] = {q: _json_value(mean_values(sl, [m], q)[m]) for q in metrics}
                if _n_defined(sl, m, metrics):
                    se["lossless"]["n_defined"] = _n_defined(sl, m, metrics)
            entry["sets"][sname] = se


def _config_dict(cfg: EvalConfig) -> dict[str, Any]:
    """``cfg`` as the MLflow run ``evaluate`` logs it, its datasets by name (``evaluate.datasets.
    lytro.sources``). A dataset named with a character MLflow refuses in a param's name
    (``Lytro (2019)``) failed the run's params at its start, and the run went untracked: such a
    name is keyed as :func:`_mlflow_metric_names` logs its metrics (``Lytro _2019_``), with its
    ``name`` as given among its params."""
    d = asdict(cfg)
    keys, _ = _mlflow_metric_names(dict.fromkeys((ds.name for ds in cfg.datasets), 0.0))
    d["datasets"] = {key: {**({"name": ds.name} if key != ds.name else {}),
                           **{k: str(v) for k, v in asdict(ds).items() if k != "name"}}
                     for key, ds in zip(keys, cfg.datasets)}
    return d
