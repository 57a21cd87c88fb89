"""JSON and YAML documents nested too deeply for Python's recursion limit (``[[[...]]]`` 100000
deep: 200 kB) are refused as unreadable, naming the file, by every reader: the parsers raise
RecursionError, which the readers' ``except ValueError`` missed, and the command line said
"internal error (a bug in bafusion, not in your input)"."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from bafusion.config import load_params, load_yaml, parse_json_object
from bafusion.data.acquire import _annotations_ok, load_eval_manifest
from bafusion.data.prepare import load_manifest
from bafusion.errors import InputFileError, UserError, json_loads
from bafusion.fusion.batch import OUTPUT_MARKER, read_marker
from bafusion.fusion.testset import read_pair_index
from bafusion.nets.model import ModelFileError, read_model_meta

DEEP_JSON = "[" * 100_000 + "]" * 100_000
DEEP = "nested too deeply"


def test_the_json_helper_refuses_deep_nesting_as_a_value_error() -> None:
    with pytest.raises(ValueError, match=DEEP):
        json_loads(DEEP_JSON)
    assert json_loads('{"a": [1, [2]]}') == {"a": [1, [2]]}


def test_a_model_description(tmp_path: Path) -> None:
    (tmp_path / "initial.json").write_text(DEEP_JSON)
    with pytest.raises(ModelFileError, match=rf"initial.json: unreadable model description: .*{DEEP}"):
        read_model_meta(tmp_path / "initial.pt")


def test_params_json() -> None:
    with pytest.raises(UserError, match=rf"--params-json: not valid JSON: .*{DEEP}"):
        parse_json_object(DEEP_JSON, "--params-json")


def test_a_pair_index(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text(DEEP_JSON)
    with pytest.raises(InputFileError, match=rf"index.json: unreadable JSON: .*{DEEP}"):
        read_pair_index(tmp_path)


def test_a_fuse_dir_record(tmp_path: Path) -> None:
    """It read as no record, silently (fuse-dir then replaced it): refused, naming it."""
    (tmp_path / OUTPUT_MARKER).write_text(DEEP_JSON)
    with pytest.raises(UserError, match=rf"{OUTPUT_MARKER}: fuse-dir's record is unreadable \(.*{DEEP}"):
        read_marker(tmp_path)


def test_an_eval_manifest(tmp_path: Path) -> None:
    (tmp_path / "m.json").write_text(DEEP_JSON)
    with pytest.raises(InputFileError, match=rf"m.json: corrupt eval manifest: .*{DEEP}"):
        load_eval_manifest(tmp_path / "m.json")


def test_coco_annotations(tmp_path: Path) -> None:
    (tmp_path / "ann.json").write_text(DEEP_JSON)
    with pytest.raises(UserError, match=rf"neither a zip archive nor JSON .*{DEEP}"):
        _annotations_ok(tmp_path / "ann.json")


def test_a_prepare_manifest(tmp_path: Path) -> None:
    from bafusion.data.prepare import MANIFEST

    (tmp_path / MANIFEST).write_text(DEEP_JSON)
    with pytest.raises(InputFileError, match=rf"corrupt manifest: .*{DEEP}"):
        load_manifest(tmp_path)


def test_a_params_file(tmp_path: Path) -> None:
    p = tmp_path / "deep.yaml"
    p.write_text("fuse: {l: " + "[" * 20_000 + "]" * 20_000 + "}\n")
    with pytest.raises(InputFileError, match=rf"deep.yaml: invalid YAML: .*{DEEP}"):
        load_params(p)
    with pytest.raises(yaml.YAMLError, match=DEEP):
        load_yaml("[" * 20_000 + "]" * 20_000)
