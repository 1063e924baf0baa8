"""Let the benchmark venv (``.venv-bench``, run with its python) see the test venv's packages.

``make bench`` installs MLflow into a venv of its own, never into the test install. Torch,
modelshelf and the rest come from the test venv through a ``.pth`` file, so nothing is copied
(a second torch would take 5 GB): ``python benchmarks/bench_venv.py .venv``.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path


def main() -> None:
    source = Path(sys.argv[1]).resolve() / "bin" / "python"
    site = subprocess.run(
        [str(source), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    # site.addsitedir also runs that folder's .pth files (the editable install of modelshelf).
    pth = Path(sysconfig.get_paths()["purelib"]) / "modelshelf-test-venv.pth"
    pth.write_text(f"import site; site.addsitedir({site!r})\n")
    print(f"{pth} -> {site}")


if __name__ == "__main__":
    main()
