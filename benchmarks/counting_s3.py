"""moto's S3 server, counting each request and adding a fixed latency to it.

Run as a script (``python counting_s3.py PORT LATENCY_MS``), it serves moto's S3 API on
127.0.0.1:PORT from its own process. Every request first waits LATENCY_MS (in its own server
thread, so concurrent requests wait side by side, as on a real network), then is counted by
operation, and the bytes of request bodies are added up (``bytes sent``). ``GET /__counts__``
answers the counts so far as JSON and starts them again; ``GET /__trace__`` answers each
request since the last trace ("METHOD /path?query"); ``GET /__latency__/MS`` sets the latency.
None of these is delayed nor counted.

The counts are taken by the server, so they hold every request a client makes, whichever
library call made it (s3fs's file objects send their uploads outside ``_call_s3``).
"""

from __future__ import annotations

import collections
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any

COUNTS_PATH = "/__counts__"
LATENCY_PATH = "/__latency__/"
TRACE_PATH = "/__trace__"


def operation(method: str, path: str, query: str) -> str:
    """The S3 operation of a request, by its method and query (enough for what a shelf sends)."""
    params = {p.split("=", 1)[0] for p in query.split("&") if p}
    if method == "GET":
        if "list-type" in params or path.count("/") <= 1:
            return "LIST"
        return "GET"
    if method == "PUT" and "partNumber" in params:
        return "PUT part"
    if method == "POST" and "uploads" in params:
        return "POST start multipart"
    if method == "POST" and "uploadId" in params:
        return "POST complete multipart"
    if method == "POST" and "delete" in params:
        return "POST delete many"
    return method


def serve(port: int, latency: float) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    moto = DomainDispatcherApplication(create_backend_app)
    counts: collections.Counter[str] = collections.Counter()
    trace: list[str] = []
    lock = threading.Lock()
    delay = [latency]

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == COUNTS_PATH:
            with lock:
                body = json.dumps(dict(counts)).encode()
                counts.clear()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if path == TRACE_PATH:
            with lock:
                body = json.dumps(trace).encode()
                trace.clear()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if path.startswith(LATENCY_PATH):
            delay[0] = float(path[len(LATENCY_PATH) :]) / 1000
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]
        time.sleep(delay[0])
        with lock:
            counts[operation(environ["REQUEST_METHOD"], path, environ.get("QUERY_STRING", ""))] += 1
            counts["bytes sent"] += int(environ.get("CONTENT_LENGTH") or 0)
            query = environ.get("QUERY_STRING", "")
            trace.append(f"{environ['REQUEST_METHOD']} {path}{'?' + query if query else ''}")
        return moto(environ, start_response)  # type: ignore[no-any-return]

    make_server(
        "127.0.0.1", port, app, threaded=True, request_handler=MotoRequestHandler
    ).serve_forever()


class CountingS3:
    """The counting server in a subprocess: ``endpoint``, ``take()`` (counts since the last
    take), ``stop()``."""

    def __init__(self, latency_ms: float = 0.0) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(port), str(latency_ms)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError("the counting S3 server did not start") from None
                time.sleep(0.1)

    def take(self) -> dict[str, int]:
        with urllib.request.urlopen(self.endpoint + COUNTS_PATH, timeout=10) as r:
            return dict(json.loads(r.read()))

    def trace(self) -> list[str]:
        """Each request since the last ``trace()``, as "METHOD /path?query", in arrival order."""
        with urllib.request.urlopen(self.endpoint + TRACE_PATH, timeout=10) as r:
            return list(json.loads(r.read()))

    def latency(self, ms: float) -> None:
        with urllib.request.urlopen(f"{self.endpoint}{LATENCY_PATH}{ms}", timeout=10):
            pass

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


if __name__ == "__main__":
    serve(int(sys.argv[1]), float(sys.argv[2]) / 1000)
