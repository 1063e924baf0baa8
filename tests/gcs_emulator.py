"""gcp-storage-emulator on 127.0.0.1, taught GCS's create-if-absent precondition.

Real GCS refuses an upload that carries ``ifGenerationMatch=0`` with 412 when the object
exists; it is how a shelf on GCS creates a record only if it is absent (gcsfs sends it for
``pipe_file(mode="create")`` and ``open(mode="xb")``, and turns the 412 into
FileExistsError). The emulator ignores the parameter and overwrites. This launcher wraps the
emulator's single-request upload handler so that it answers as GCS documents: 412, and the
object left as it was. The emulator serves one request at a time, so the check and the write
cannot interleave with another upload.

It also answers the JSON API's ``moveTo`` (gcsfs's ``mv``, which the shelf uses only to set
damaged bytes aside in ``fsck --repair``), as a copy then a delete: the emulator has no such
route, and its 501 makes gcsfs retry with back-off for half a minute before it falls back to
the same copy and delete.

What this proves: the client sends the precondition, and the shelf acts right on both
answers. What it cannot prove: that GCS itself enforces it (Google documents that it does).

It also reads multipart uploads byte-exact. The emulator parses them with Python's email
parser, which takes a CR ending the file's bytes for part of the line break before the closing
delimiter: a file whose last byte is 0x0D was stored one byte short (one object in 256 of
random bytes; one blob in six, when a blob goes up as 41 parts). Here a part's body ends at the
line break before the next delimiter, in the line-break style of that part's own headers
(gcsfs writes LF).

    python tests/gcs_emulator.py PORT
"""

from __future__ import annotations

import json
import re
import sys
import time
from http import HTTPStatus
from typing import Any

from gcp_storage_emulator import server, settings
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects

_insert = objects.insert


def _object_name(request: Any) -> str | None:
    if "name" in request.query:
        return str(request.query["name"][0])
    data = request.data
    if isinstance(data, dict) and isinstance(data.get("meta"), dict):
        return data["meta"].get("name")
    return None


def insert(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> Any:
    if request.query.get("ifGenerationMatch") == ["0"]:
        name = _object_name(request)
        try:
            storage.get_file_obj(request.params["bucket_name"], name)
        except NotFound:
            pass
        else:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "Precondition Failed"}})
            return None
    return _insert(request, response, storage, *args, **kwargs)


_read_data = server._read_data


def read_data(request_handler: Any, query: Any) -> Any:
    content_type = request_handler.headers.get("Content-Type") or ""
    boundary = re.search(r'boundary="?([^";]+)"?', content_type)
    if not content_type.startswith("multipart/related") or boundary is None:
        return _read_data(request_handler, query)
    raw = server._decode_raw_data(server._read_raw_data(request_handler), request_handler)
    parts = []
    for part in raw.split(b"--" + boundary.group(1).encode())[1:-1]:
        crlf = part.startswith(b"\r\n")
        head, _, body = part.partition(b"\r\n\r\n" if crlf else b"\n\n")
        parts.append((head, body[: -2 if crlf else -1]))  # the break before the delimiter
    kind = re.search(rb"(?im)^content-type:\s*([^\r\n;]+)", parts[1][0])
    return {
        "meta": json.loads(parts[0][1]),
        "content": parts[1][1],
        "content-type": kind.group(1).decode() if kind else "application/octet-stream",
    }


def move(request: Any, response: Any, storage: Any, *args: Any, **kwargs: Any) -> None:
    bucket, source = request.params["bucket_name"], request.params["object_id"]
    try:
        moved = objects._copy(
            request.base_url, storage, bucket, source, bucket, request.params["dest_object_id"]
        )
        storage.delete_file(bucket, source)
    except NotFound:
        response.status = HTTPStatus.NOT_FOUND
        return
    response.json(moved)


def main(port: int) -> None:
    server._read_data = read_data  # Request.data reads it here
    objects.insert = insert  # the fallback route of RequestHandler.handle reads it here
    for _regex, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is _insert:
                handlers[method] = insert
    routes = []
    for prefix in (settings.API_ENDPOINT, ""):
        routes.append(
            (
                rf"^{re.escape(prefix)}/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
                r"/moveTo/o/(?P<dest_object_id>.*[^/]+)$",
                {"POST": move},
            )
        )
    server.HANDLERS = (*routes, *server.HANDLERS)
    emulator = server.create_server("127.0.0.1", port, in_memory=True)
    emulator.start()
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main(int(sys.argv[1]))
