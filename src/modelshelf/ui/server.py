"""Run the web UI: ``serve(shelf)`` is what ``modelshelf ui`` does."""

from __future__ import annotations

import threading
import time
import webbrowser
from collections.abc import Callable

from .._deps import require
from .._shelf import Shelf
from .app import create_app

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def allowed_hosts(host: str) -> list[str]:
    """The Host headers a server bound to ``host`` answers: its loopback names, the name it
    was bound to, or any name when bound to every interface."""
    if host in ("0.0.0.0", "::", ""):
        return ["*"]
    return sorted({host, f"[{host}]" if ":" in host else host, *LOOPBACK, "[::1]"})


def serve(
    shelf: Shelf,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    allow_writes: bool = False,
    open_browser: bool = False,
    say: Callable[[str], None] = print,
) -> None:
    """Serve the web UI over ``shelf`` until interrupted.

    Args:
        shelf: the shelf to show.
        host: the address to bind; anything but the loopback is warned about, since everyone
            who reaches it can read the shelf.
        port: the TCP port.
        allow_writes: allow alias moves, tag and description edits, deletes and gc from the
            page. Each write still needs the token in the link printed at start-up.
        open_browser: open the link in a browser once the server is up.
        say: where the start-up lines go.
    """
    uvicorn = require("uvicorn", "the web UI")
    app = create_app(shelf, allow_writes=allow_writes, allowed_hosts=allowed_hosts(host))
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    url = f"http://{shown}:{port}/"
    link = f"{url}?token={app.state.settings.token}" if allow_writes else url
    say(f"modelshelf ui: {shelf.url}")
    if host not in LOOPBACK:
        say(
            f"warning: bound to {host!r}, not the loopback: anyone who can reach this machine "
            "can read this shelf" + (" (writes still need the token)." if allow_writes else ".")
        )
    if allow_writes:
        say(f"writes allowed with this link's token (keep it private): {link}")
    else:
        say(f"read-only (start with --allow-writes to edit): {link}")
    if open_browser:

        def opener() -> None:
            time.sleep(0.8)
            webbrowser.open(link)

        threading.Thread(target=opener, daemon=True).start()
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
