"""copy: a laptop shelf to S3 (moto's server), then a fresh process loads it from there."""

from __future__ import annotations

from pathlib import Path

import pytest

import modelshelf as ms
from conftest import blob_keys, make_url, run_python

LOADER = r"""
import os, sys
import modelshelf as ms
assert not os.path.exists(os.environ["MODELSHELF_CACHE"])  # an empty cache
v = ms.Shelf(sys.argv[1]).get("cnn:best")
folder = v.download()
print(v.ref, open(os.path.join(folder, "weights.bin"), "rb").read().hex(), v.metadata["acc"])
"""


@pytest.mark.slow  # a fresh interpreter
def test_copy_local_to_s3_then_load_in_a_fresh_process(
    tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> None:
    laptop = ms.Shelf(tmp_path / "laptop")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "weights.bin").write_bytes(b"\x00\x01" * 1000)
    (folder / "config.json").write_text('{"lr": 0.1}')
    with laptop.run(config={"lr": 0.1}) as run:
        run.log({"loss": 0.3})
        laptop.log_artifact(folder, name="cnn", type="model", metadata={"acc": 0.8}, run=run)
        (folder / "config.json").write_text('{"lr": 0.01}')
        laptop.log_artifact(
            folder, name="cnn", type="model", metadata={"acc": 0.9}, aliases=["best"], run=run
        )

    url = make_url("s3", tmp_path, request)
    team = ms.Shelf(url)
    first = laptop.copy("cnn:v0", url)
    assert [v.ref for v in first] == ["cnn:v0"]
    before = blob_keys(team)
    assert len(before) == 2
    second = laptop.copy("cnn:v1", url, aliases=True)
    added = set(blob_keys(team)) - set(before)
    assert len(added) == 1  # only the changed config.json travelled
    assert second[0].aliases == ["best", "latest"]

    copied = team.get("cnn:best")
    assert copied.digest == laptop.get("cnn:best").digest
    assert copied.metadata == laptop.get("cnn:best").metadata  # metrics fixed at commit too
    assert copied.metadata == {"acc": 0.9, "metrics": {"acc": 0.9, "loss": 0.3}}
    assert copied.created_at == laptop.get("cnn:best").created_at
    origin = copied.logged_by()
    assert origin is not None and origin.config == {"lr": 0.1}
    assert [v.ref for v in origin.outputs()] == ["cnn:v0", "cnn:v1"]
    copied.verify()

    # Copying again changes nothing.
    assert [v.ref for v in laptop.copy("cnn", url)] == ["cnn:v0", "cnn:v1"]
    assert len(team.versions("cnn")) == 2

    monkeypatch.setenv("MODELSHELF_CACHE", str(tmp_path / "fresh-cache"))
    out = run_python(LOADER, url).stdout.split()
    assert out == ["cnn:v1", ("0001" * 1000), "0.9"]
