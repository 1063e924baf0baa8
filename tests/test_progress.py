"""Progress bars the library shows itself: Rich's on a terminal, none into a pipe or a log
(the notebook's tqdm bar is tested through nbclient in test_notebooks)."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

SCRIPT = r"""
import sys
import modelshelf as ms
v = ms.log_artifact(sys.argv[1], name="big", type="model")
v.download(sys.argv[2])
ms.cache.prune(max_bytes=0)  # so that the next read fetches from the shelf
v.path("big.bin")
ms.log_artifact(sys.argv[3], name="small", type="model")
print("done", flush=True)
"""


def _files(tmp_path: Path) -> list[str]:
    tmp_path.mkdir(exist_ok=True)
    big, small = tmp_path / "big.bin", tmp_path / "small.bin"
    big.write_bytes(os.urandom(5 * 1024 * 1024))
    small.write_bytes(b"tiny")
    return [str(big), str(tmp_path / "out"), str(small)]


def _run_on_a_terminal(args: list[str], env: dict[str, str]) -> str:
    """Run the script with stderr on a pseudo-terminal; everything written to it."""
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, *args],
        stdout=subprocess.PIPE, stderr=follower, env=env,
    )  # fmt: skip
    os.close(follower)
    seen = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the child closed its end
            break
        if not chunk:
            break
        seen += chunk
    assert proc.wait(timeout=120) == 0, seen.decode(errors="replace")[-2000:]
    os.close(leader)
    return seen.decode(errors="replace")


def test_a_terminal_gets_a_rich_bar_for_large_transfers_only(tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "100"}
    shown = _run_on_a_terminal(_files(tmp_path), env)
    assert "log big" in shown and "download big:v0" in shown
    assert "download big:v0/big.bin" in shown  # one file, as load_model reads it
    assert "log small" not in shown

    quiet = _run_on_a_terminal(_files(tmp_path / "again"), {**env, "MODELSHELF_PROGRESS": "0"})
    assert "big" not in quiet


def test_a_pipe_gets_no_bar(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, *_files(tmp_path)], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stdout == "done\n"
    assert "big" not in proc.stderr
