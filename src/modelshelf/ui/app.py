"""The web app behind ``modelshelf ui``: Starlette routes rendering Jinja2 templates.

Security, since a shelf is untrusted input and the server may hold write access to it:
- every template autoescapes; data for scripts goes in JSON blocks (``tojson`` escapes ``<``),
  and the Content-Security-Policy allows no inline script, so a name, note or file that slips
  through as HTML still runs nothing;
- the server is read-only unless started with ``allow_writes``; even then a write needs the
  per-process token (``?token=``, the ``X-Modelshelf-Token`` header, or the cookie the opening
  link sets) and, when the token comes from the cookie, the CSRF token each page carries;
- requests whose Host header is not the bound address are refused (DNS rebinding);
- files are downloaded as attachments, and only PNG, JPEG, GIF and WebP are served inline
  (an SVG or HTML file from a shelf never renders as a page of this origin).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from .._deps import require
from .._errors import (
    ConflictError,
    InvalidArgumentError,
    InvalidReferenceError,
    ModelshelfError,
    NotFoundError,
)
from .._shelf import Shelf
from . import views

COOKIE = "modelshelf_token"
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
DIRECTIONS = ("both", "upstream", "downstream")
#: Records the server keeps in memory (a commit record is about 1 KB): 200 artifacts x 100
#: versions, with their states, fit.
RECORD_CACHE = 100_000


def package_dir(sub: str) -> Path:
    return Path(str(resources.files("modelshelf.ui") / sub))


def environment() -> Any:
    """The Jinja2 environment of the UI's templates (autoescaped, undefined is an error)."""
    jinja2 = require("jinja2")
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(package_dir("templates")),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.policies["json.dumps_function"] = dumps
    env.filters["when"] = views.when
    env.filters["number"] = views.number
    env.filters["urlq"] = lambda params: urlencode(params, doseq=True)
    env.globals["finite"] = views.finite
    return env


class Settings:
    """What one server process was started with."""

    def __init__(self, shelf: Shelf, *, allow_writes: bool, token: str | None) -> None:
        self.shelf = shelf
        self.allow_writes = allow_writes
        self.token = token or secrets.token_urlsafe(24)
        self.csrf = hmac.new(self.token.encode(), b"csrf", hashlib.sha256).hexdigest()


def create_app(
    shelf: Shelf,
    *,
    allow_writes: bool = False,
    token: str | None = None,
    allowed_hosts: list[str] | None = None,
) -> Any:
    """The Starlette application serving ``shelf``. ``app.state.settings.token`` is the write
    token; ``allowed_hosts`` are the Host names accepted (default: this machine's loopback
    names)."""
    require("starlette", "the web UI")
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.middleware import Middleware
    from starlette.middleware.base import BaseHTTPMiddleware
    from starlette.middleware.trustedhost import TrustedHostMiddleware
    from starlette.requests import Request
    from starlette.responses import (
        FileResponse,
        HTMLResponse,
        JSONResponse,
        PlainTextResponse,
        RedirectResponse,
        Response,
    )
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    settings = Settings(shelf, allow_writes=allow_writes, token=token)
    # One Shelf serves every page: the records it has read (versions, states, runs: written
    # once, never changed) are kept for the next page, so a page re-reads only log heads.
    shelf.repository.labels.records.max_records = RECORD_CACHE
    env = environment()
    board = views.Memo()  # the dashboard's rows per artifact

    def authorised(request: Request) -> tuple[bool, bool]:
        """(has the token, came by cookie)."""
        given = request.headers.get("x-modelshelf-token") or request.query_params.get("token")
        if given is not None:
            return hmac.compare_digest(given, settings.token), False
        cookie = request.cookies.get(COOKIE)
        if cookie is not None and hmac.compare_digest(cookie, settings.token):
            return True, True
        return False, False

    def page(request: Request, template: str, status: int = 200, **data: Any) -> Response:
        has_token, _ = authorised(request)
        can_write = settings.allow_writes and has_token
        html = env.get_template(template).render(
            request=request,
            path=request.url.path,
            shelf_url=shelf.url,
            allow_writes=settings.allow_writes,
            can_write=can_write,
            csrf=settings.csrf if can_write else "",
            **data,
        )
        return HTMLResponse(html, status_code=status)

    def error(request: Request, exc: Exception) -> Response:
        if isinstance(exc, NotFoundError):
            status, title = 404, "Not found"
        elif isinstance(exc, (InvalidReferenceError, InvalidArgumentError, ValueError)):
            status, title = 400, "Bad request"
        else:
            status, title = 500, "The shelf could not be read"
        if request.url.path.startswith("/api/"):
            return JSONResponse({"error": str(exc)}, status_code=status)
        return page(request, "error.html", status=status, title=title, message=str(exc))

    def guarded(handler: Any) -> Any:
        """Turn what a shelf raises (not found, bad reference, unreadable) into a page."""

        def endpoint(request: Request) -> Response:
            try:
                result: Response = handler(request)
            except (ModelshelfError, ValueError, OSError) as exc:
                return error(request, exc)
            return result

        endpoint.__name__ = handler.__name__
        return endpoint

    # -- pages ------------------------------------------------------------------------
    def home(request: Request) -> Response:
        q = request.query_params.get("q", "")
        return page(request, "home.html", **views.home(shelf, q))

    def artifact(request: Request) -> Response:
        name = request.path_params["name"]
        return page(request, "artifact.html", **views.artifact(shelf, name))

    def version(request: Request) -> Response:
        data = views.version(shelf, request.path_params["ref"])
        return page(request, "version.html", v=data)

    def preview(request: Request) -> Response:
        ref, path = request.query_params.get("ref", ""), request.query_params.get("path", "")
        data = views.preview(shelf, ref, path)
        if request.headers.get("hx-request"):  # into the version page's preview pane
            return HTMLResponse(env.get_template("_preview.html").render(ref=ref, p=data))
        return page(request, "preview.html", ref=ref, p=data)

    def raw(request: Request) -> Response:
        """One file's bytes: inline for the image types a preview shows, else attached."""
        ref, path = request.query_params.get("ref", ""), request.query_params.get("path", "")
        v = shelf.get(ref)
        if path not in v.files:
            raise NotFoundError(f"{v.ref} has no file {path!r}.", ref=v.ref)
        if v.files[path].uri:
            raise InvalidArgumentError(
                f"{path!r} of {v.ref} is a reference to {v.files[path].uri!r}: "
                "its bytes are not on the shelf."
            )
        local = v.path(path)
        suffix = Path(path).suffix.lower()
        filename = path.rsplit("/", 1)[-1]
        if request.query_params.get("inline") and suffix in views.IMAGE_TYPES:
            return FileResponse(local, media_type=views.IMAGE_TYPES[suffix])
        # Bytes, whatever the name says: with nosniff, a browser neither renders nor runs them.
        return FileResponse(local, media_type="application/octet-stream", filename=filename)

    def compare(request: Request) -> Response:
        refs = [r for r in request.query_params.getlist("ref") if r]
        if len(refs) < 2:
            return page(
                request,
                "compare_pick.html",
                refs=refs,
                names=shelf.artifacts(),
            )
        if request.query_params.get("order") == "oldest":  # ticked in a table, newest first
            refs = [v.ref for v in sorted(map(shelf.get, refs), key=lambda v: (v.name, v.version))]
        data = views.compare(shelf, refs)
        return page(request, "compare.html", c=data, refs=data["refs"])

    def lineage(request: Request) -> Response:
        ref = request.query_params.get("ref", "")
        if not ref:
            return page(request, "lineage_pick.html", names=shelf.artifacts())
        direction, depth = _lineage_args(request)
        shelf.get(ref)  # a bad or unknown ref is an error page, not an empty graph
        return page(
            request, "lineage.html", ref=ref, direction=direction, depth=depth,
            directions=DIRECTIONS,
        )  # fmt: skip

    def runs(request: Request) -> Response:
        return page(request, "runs.html", **views.runs(shelf, request.query_params.get("job_type")))

    def run(request: Request) -> Response:
        return page(request, "run.html", r=views.run(shelf, request.path_params["run_id"]))

    def dashboard(request: Request) -> Response:
        q = request.query_params
        mode = q.get("mode", "max")
        if mode not in ("min", "max"):
            raise InvalidArgumentError(f"mode must be min or max, not {mode!r}.", value=mode)
        top = _int(q.get("top", "10"), "top", 1, 1000)
        data = views.dashboard(
            shelf, q.get("type", "model"), q.get("metric") or None, mode, top, memo=board
        )
        return page(request, "dashboard.html", **data)

    # -- JSON ---------------------------------------------------------------------------
    def api_lineage(request: Request) -> Response:
        direction, depth = _lineage_args(request)
        ref = request.query_params.get("ref", "")
        return JSONResponse(views.lineage(shelf, ref, direction, depth))

    def api_explode(request: Request) -> Response:
        q = request.query_params
        if q.get("artifact"):
            return JSONResponse(views.explode_artifact(shelf, q["artifact"]))
        if q.get("job_type"):
            return JSONResponse(views.explode_job_type(shelf, q["job_type"]))
        raise InvalidArgumentError("explode needs ?artifact=NAME or ?job_type=TYPE.")

    # -- writes -------------------------------------------------------------------------
    async def write(request: Request) -> Response:
        if not settings.allow_writes:
            return _refused(403, "This server is read-only: start it with --allow-writes.")
        has_token, by_cookie = authorised(request)
        if not has_token:
            return _refused(
                403, "A write needs the token printed when the server started (?token=...)."
            )
        form = await request.form()
        if by_cookie:
            given = request.headers.get("x-csrf-token") or str(form.get("csrf", ""))
            if not hmac.compare_digest(given, settings.csrf):
                return _refused(403, "The CSRF token is missing or wrong: reload the page.")
        origin = request.headers.get("origin")
        if origin is not None and origin.split("://", 1)[-1] != request.headers.get("host"):
            return _refused(403, f"Cross-origin write from {origin!r} refused.")
        action = request.path_params["action"]
        fields = {k: str(v) for k, v in form.items()}
        try:
            message, back = await run_in_threadpool(_apply, shelf, action, fields)
        except (ModelshelfError, ValueError, OSError) as exc:
            status = 404 if isinstance(exc, NotFoundError) else 400
            if isinstance(exc, ConflictError):
                status = 409
            return _refused(status, str(exc))
        if request.headers.get("hx-request"):
            # Plain text, which the page shows as text: the message quotes shelf names.
            response = PlainTextResponse(message)
            if back:
                response.headers["HX-Redirect"] = back
            elif action != "gc":  # gc's report is shown where it was asked for
                response.headers["HX-Refresh"] = "true"
            return response
        if request.headers.get("accept", "").startswith("application/json"):
            return JSONResponse({"ok": True, "message": message})
        return RedirectResponse(back or request.headers.get("referer") or "/", status_code=303)

    def _refused(status: int, message: str) -> Response:
        return PlainTextResponse(message, status_code=status)

    routes = [
        Route("/", guarded(home)),
        Route("/a/{name:path}", guarded(artifact)),
        Route("/v/{ref:path}", guarded(version)),
        Route("/preview", guarded(preview)),
        Route("/file", guarded(raw)),
        Route("/compare", guarded(compare)),
        Route("/lineage", guarded(lineage)),
        Route("/runs", guarded(runs)),
        Route("/runs/{run_id}", guarded(run)),
        Route("/dashboard", guarded(dashboard)),
        Route("/api/lineage", guarded(api_lineage)),
        Route("/api/explode", guarded(api_explode)),
        Route("/api/{action}", write, methods=["POST"]),
        Mount("/static", StaticFiles(directory=package_dir("static")), name="static"),
    ]

    async def headers(request: Request, call_next: Any) -> Response:
        token = request.query_params.get("token")
        if (
            request.method == "GET"
            and token is not None
            and not request.url.path.startswith("/api")
        ):
            # The opening link: keep the token in a cookie, and take it out of the address bar.
            if not hmac.compare_digest(token, settings.token):
                return _refused(403, "That token is not this server's: use the link it printed.")
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            target = request.url.path + ("?" + urlencode(rest) if rest else "")
            response: Response = RedirectResponse(target, status_code=303)
            response.set_cookie(COOKIE, settings.token, httponly=True, samesite="strict")
        else:
            response = await call_next(request)
        response.headers["Content-Security-Policy"] = CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Referrer-Policy"] = "no-referrer"
        if not request.url.path.startswith("/static"):
            response.headers["Cache-Control"] = "no-store"
        return response

    hosts = allowed_hosts or ["127.0.0.1", "localhost", "::1", "[::1]"]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(TrustedHostMiddleware, allowed_hosts=hosts),
            Middleware(BaseHTTPMiddleware, dispatch=headers),
        ],
    )
    app.state.settings = settings
    return app


def _int(text: str, what: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise InvalidArgumentError(f"{what} must be a whole number, not {text!r}.") from None
    if not low <= value <= high:
        raise InvalidArgumentError(f"{what} must be between {low} and {high}, not {value}.")
    return value


def _lineage_args(request: Any) -> tuple[str, int | None]:
    q = request.query_params
    direction = q.get("direction", "both")
    if direction not in DIRECTIONS:
        raise InvalidArgumentError(
            f"direction must be one of {', '.join(DIRECTIONS)}, not {direction!r}."
        )
    depth_text = q.get("depth", "2")
    depth = None if depth_text in ("", "all") else _int(depth_text, "depth", 0, 100)
    return direction, depth


def _apply(shelf: Shelf, action: str, f: dict[str, str]) -> tuple[str, str | None]:
    """Carry out one write from the UI; returns what to say and where to go next (None: stay)."""
    if action == "gc":
        report = shelf.gc(dry_run=f.get("dry_run") == "1")
        return str(report), None
    ref = f.get("ref", "")
    v = shelf.get(ref)
    if action == "alias":
        v.set_alias(f.get("alias", "").strip())
        return f"{f['alias']!r} now points to {v.ref}.", None
    if action == "unalias":
        v.remove_alias(f.get("alias", ""))
        return f"{f['alias']!r} removed from {v.ref}.", None
    if action == "tags":
        add = [t for t in f.get("add", "").replace(",", " ").split() if t]
        remove = [t for t in f.get("remove", "").replace(",", " ").split() if t]
        if add:
            v.add_tags(*add)
        if remove:
            v.remove_tags(*remove)
        return f"Tags of {v.ref}: {', '.join(v.tags) or 'none'}.", None
    if action == "describe":
        v.set_description(f.get("text", ""))
        return f"Description of {v.ref} saved.", None
    if action == "delete":
        shelf.delete(v.ref, force=f.get("force") == "1")
        left = shelf.artifacts()
        return f"{v.ref} deleted.", f"/a/{v.name}" if v.name in left else "/"
    raise NotFoundError(
        f"There is no write {action!r}: use alias, unalias, tags, describe, delete or gc."
    )


def dumps(data: Any, **options: Any) -> str:
    """JSON for a page's data block: NaN and infinities become null (JSON has neither)."""

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    return json.dumps(clean(data), default=str, **options)
