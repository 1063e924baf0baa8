"""Team sharing through an S3 shelf: Alice trains on her laptop shelf and publishes the model to
the team's bucket as `production`; Bob, on another machine with an empty cache, loads it by
alias and his inference run shows up in the model's lineage.

    python examples/s3_team.py

moto's S3 server on 127.0.0.1 stands in for the bucket (`stand_in_bucket`). With a real bucket,
change one line, TEAM_SHELF, to your s3:// (or gs://) URL, and drop the stand-in; credentials
come from the usual AWS environment or config, as for any boto3 program.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import modelshelf as ms
from digits_data import load
from digits_nets import accuracy
from pipeline import MODEL, evaluate, prepare, train

TEAM_SHELF = "s3://team-models/shelf"  # <- the one line a real team changes


def alice() -> None:
    laptop, team = ms.shelf(), ms.Shelf(TEAM_SHELF)
    dataset = prepare(laptop)
    candidate = train(laptop, hidden=32, lr=0.01)
    evaluate(laptop, candidate.ref)
    laptop.copy(dataset.ref, to=team)  # only the blobs the bucket lacks travel
    published = laptop.copy(candidate.ref, to=team)[0]  # with metadata and the training run
    published.set_alias("production")
    print(f"alice: {candidate.ref} on {laptop.url} -> {published.ref} on {team.url} [production]")


def bob() -> None:
    team = ms.Shelf(TEAM_SHELF)
    with team.run(job_type="inference") as run:
        version = run.use(f"{MODEL}:production")  # an input edge, recorded on the team shelf
        model = team.load_model(version.ref)  # downloaded, every byte checked, rebuilt
        acc = accuracy(model, *load()["test"])
        run.log({"test_acc": acc})
    print(f"bob: loaded {version.ref} from {team.url}; test accuracy {acc:.3f}")


@contextlib.contextmanager
def stand_in_bucket() -> Iterator[None]:
    """moto's S3 server on 127.0.0.1 and one bucket on it, in place of a real bucket."""
    import s3fs
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    os.environ.update(  # what s3fs and boto3 read; Bob's process inherits them
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_ACCESS_KEY_ID="x",
        AWS_SECRET_ACCESS_KEY="x", AWS_DEFAULT_REGION="us-east-1",
    )  # fmt: skip
    s3fs.S3FileSystem().mkdir(TEAM_SHELF.removeprefix("s3://").split("/")[0])
    try:
        yield
    finally:
        server.stop()


def main() -> None:
    with stand_in_bucket():  # with a real bucket, drop this line
        alice()
        with tempfile.TemporaryDirectory() as cache:  # Bob's machine: nothing cached yet
            env = {**os.environ, "MODELSHELF_CACHE": cache}
            subprocess.run([sys.executable, __file__, "bob"], env=env, check=True)
        team = ms.Shelf(TEAM_SHELF)
        production = team.get(f"{MODEL}:production")
        for r in production.used_by():
            host = r.environment["host"]
            print(f"\n{production.ref} was used by {r.job_type} run {r.id} on {host}")
        print(team.lineage(production.ref))


if __name__ == "__main__":
    bob() if sys.argv[1:] == ["bob"] else main()
