"""Hypothesis fuzzing of what a user types and what a shelf holds: names, refs, run ids, keys,
records and manifests. Whatever the input, the answer is a value or the library's own error."""

from __future__ import annotations

import contextlib
import posixpath
from pathlib import Path

import pytest

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import modelshelf as ms  # noqa: E402
from modelshelf._format.manifest import Manifest  # noqa: E402
from modelshelf._format.names import (  # noqa: E402
    is_run_id,
    parse_ref,
    run_id_of,
    validate_alias,
    validate_name,
)
from modelshelf._format.records import loads  # noqa: E402
from modelshelf._storage.base import check_key  # noqa: E402

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Text that leans towards the characters names and paths are made of, and their traps.
pieces = st.lists(
    st.sampled_from([*list("ab0Z._-/:\\ \x00\n"), "..", "v1", "�", "é", "%2e"]),
    max_size=12,
).map("".join)
text = st.one_of(st.text(max_size=300), pieces)


@FUZZ
@given(text)
def test_refs_are_parsed_or_refused_with_the_rule(value: str) -> None:
    try:
        ref = parse_ref(value)
    except ms.InvalidReferenceError as exc:
        assert repr(value)[:20] in str(exc) or len(repr(value)) > 20
        return
    assert validate_name(ref.name) == ref.name
    assert ".." not in ref.name.split("/") and "\x00" not in value
    if ref.alias is not None:
        assert ref.alias == "latest" or validate_alias(ref.alias) == ref.alias


@FUZZ
@given(text)
def test_run_ids_never_name_a_path(value: str) -> None:
    if is_run_id(value):
        assert "/" not in value and value not in (".", "..") and "\x00" not in value
        assert run_id_of(value) == value
    else:
        with pytest.raises(ms.InvalidReferenceError):
            run_id_of(value)


@FUZZ
@given(text)
def test_an_accepted_key_stays_inside_the_shelf(key: str) -> None:
    try:
        check_key(key)
    except ms.IntegrityError:
        return
    normal = posixpath.normpath(key) if key else "."
    assert not normal.startswith("/") and normal != ".." and not normal.startswith("../")
    assert "\\" not in key and "\x00" not in key


@FUZZ
@given(
    st.one_of(
        st.binary(max_size=400),
        st.recursive(st.none(), st.lists, max_leaves=50).map(
            lambda v: repr(v).replace("None", "null").replace("(", "[").replace(")", "]").encode()
        ),
    )
)
def test_records_decode_or_are_integrity_errors(data: bytes) -> None:
    with contextlib.suppress(ms.IntegrityError):
        assert isinstance(loads(data, "fuzz"), dict)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@FUZZ
@given(st.dictionaries(pieces, json_values, max_size=4), json_values)
def test_manifests_decode_to_safe_paths_or_are_integrity_errors(
    files: dict[str, object], fmt: object
) -> None:
    import json

    data = json.dumps({"format": fmt, "files": files}).encode()
    try:
        manifest = Manifest.from_bytes(data, "fuzz")
    except ms.IntegrityError:
        return
    for path in manifest.files:
        normal = posixpath.normpath(path)
        assert path and not normal.startswith("/") and normal.split("/")[0] != ".."


def tree(root: Path) -> set[Path]:
    return set(root.rglob("*"))


@pytest.fixture(scope="module")
def fuzz_shelf(tmp_path_factory: pytest.TempPathFactory) -> tuple[ms.Shelf, set[Path]]:
    root = tmp_path_factory.mktemp("fuzz")
    shelf = ms.Shelf(root / "shelf")
    (root / "f.txt").write_text("x")
    shelf.log_artifact(root / "f.txt", name="m", type="data", aliases=["best"])
    return shelf, tree(root)


@FUZZ
@given(value=text)
def test_any_ref_or_run_id_gets_a_version_or_the_librarys_error(
    fuzz_shelf: tuple[ms.Shelf, set[Path]], value: str
) -> None:
    shelf, before = fuzz_shelf
    for call in (shelf.get, shelf.get_run, shelf.versions):
        with contextlib.suppress(ms.ModelshelfError):
            call(value)
    assert tree(Path(shelf.url).parent) == before  # a read writes nothing, anywhere
