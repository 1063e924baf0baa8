"""Names, aliases and references: the rules of docs/api.md's "References", table-driven."""

from __future__ import annotations

from pathlib import Path

import pytest

import modelshelf as ms
from modelshelf._format.names import Ref, parse_ref

GOOD_REFS = [
    ("model", Ref("model", alias="latest")),
    ("model:v0", Ref("model", version=0)),
    ("model:v12", Ref("model", version=12)),
    ("model:best", Ref("model", alias="best")),
    ("model:v1x", Ref("model", alias="v1x")),
    ("team/model:prod.2024-01", Ref("team/model", alias="prod.2024-01")),
    ("A1._-x", Ref("A1._-x", alias="latest")),
    ("x" * 128 + ":" + "a" * 64, Ref("x" * 128, alias="a" * 64)),
]

BAD_REFS = [
    "",
    ":v1",
    "model:",
    "-model",
    ".hidden",
    "a/b/c",
    "team/",
    "/model",
    "model:v01",
    "model:1best",
    "model:best alias",
    "model:v1:v2",
    "x" * 129,
    "model:" + "a" * 65,
    "mod el",
    "../model",
    "model/..",
    "modèle",
    None,
    3,
]

BAD_ALIASES = ["v3", "v0", "3best", "", "-x", "a b", "a" * 65, "é", None]


@pytest.mark.parametrize(("text", "expected"), GOOD_REFS)
def test_good_references_parse(text: str, expected: Ref) -> None:
    assert parse_ref(text) == expected


@pytest.mark.parametrize("text", BAD_REFS)
def test_bad_references_quote_the_input_and_the_rule(tmp_path: Path, text: object) -> None:
    with pytest.raises(ms.InvalidReferenceError) as exc:
        ms.Shelf(tmp_path).get(text)  # type: ignore[arg-type]
    assert repr(text) in str(exc.value)
    assert "reference is '[project/]name[:selector]'" in str(exc.value)
    assert isinstance(exc.value, ValueError) and exc.value.value == text


@pytest.mark.parametrize("alias", BAD_ALIASES)
def test_bad_aliases_are_refused_before_anything_is_written(
    tmp_path: Path, files: Path, alias: object
) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    with pytest.raises(ms.InvalidReferenceError, match="alias") as exc:
        shelf.log_artifact(files, name="m", type="model", aliases=[alias])  # type: ignore[list-item]
    assert repr(alias) in str(exc.value)
    assert shelf.repository.storage.find("") == []


@pytest.mark.parametrize("name", ["bad name", "a/b/c", "", "_x", "x/", "../up"])
def test_bad_artifact_names(files: Path, name: str) -> None:
    with pytest.raises(ms.InvalidReferenceError, match="Invalid artifact name") as exc:
        ms.Artifact(name, "model")
    assert repr(name) in str(exc.value)


@pytest.mark.parametrize("type_", ["", "a b", "-x", None, "x" * 65])
def test_bad_types(type_: object) -> None:
    with pytest.raises(ms.InvalidReferenceError, match="artifact type"):
        ms.Artifact("m", type_)  # type: ignore[arg-type]


@pytest.mark.parametrize("tag", ["", "  ", "a\nb", "x" * 129, 5])
def test_bad_tags(tmp_path: Path, files: Path, tag: object) -> None:
    shelf = ms.Shelf(tmp_path / "shelf")
    with pytest.raises(ms.InvalidReferenceError, match="tag"):
        shelf.log_artifact(files, name="m", type="model", tags=[tag])  # type: ignore[list-item]


@pytest.mark.parametrize("name", ["../x", "/abs", "a/./b", "a//b", "a\\b", "C:x"])
def test_bad_file_names_in_an_artifact(files: Path, name: str) -> None:
    with pytest.raises(ms.InvalidReferenceError, match="relative path"):
        ms.Artifact("m", "model").add_file(files / "config.json", name=name)


def test_missing_paths_say_what_is_wrong(tmp_path: Path, files: Path) -> None:
    art = ms.Artifact("m", "model")
    with pytest.raises(ms.NotFoundError, match="missing"):
        art.add_file(tmp_path / "nope")
    with pytest.raises(ms.NotFoundError, match="use add_dir"):
        art.add_file(files)
    with pytest.raises(ms.NotFoundError, match="use add_file"):
        art.add_dir(files / "config.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ms.NotFoundError, match="holds no files"):
        art.add_dir(tmp_path / "empty")
