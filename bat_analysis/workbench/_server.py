"""Start the review workbench on 127.0.0.1 (uvicorn), on a given port or a free one, with a fresh token."""

from __future__ import annotations

import secrets
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BatError
from ._app import create_app
from ._session import ReviewSession

HOST = "127.0.0.1"


@dataclass
class Workbench:
    """A started (not yet serving) workbench: its server, listening socket, token and address."""

    server: Any
    sock: socket.socket
    token: str
    port: int
    session: ReviewSession

    @property
    def url(self) -> str:
        """The address to open, carrying the token (printed once; the page then keeps it in a cookie)."""
        return f"http://{HOST}:{self.port}/?token={self.token}"

    def serve(self) -> None:
        """Serve until interrupted (Ctrl+C) or :meth:`stop`."""
        self.server.run(sockets=[self.sock])

    def serve_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=self.serve, name="bat-review", daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.server.should_exit = True


def listen(port: int | None) -> socket.socket:
    """A listening socket on 127.0.0.1 (port 0: a free one chosen by the system)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, port or 0))
    except OSError as exc:
        sock.close()
        raise BatError(f"cannot listen on {HOST}:{port}: {exc.strerror or exc}", field="--port",
                       expected="a free port (or leave --port out to get one)") from None
    sock.listen(64)
    sock.setblocking(False)
    return sock


def make_workbench(out: Path | str, *, port: int | None = None, reviewer: str | None = None,
                   log_level: str = "warning") -> Workbench:
    """Open a results folder for review and prepare its server (BatError when the folder has no run)."""
    import uvicorn

    session = ReviewSession(out)
    sock = listen(port)
    real_port = sock.getsockname()[1]
    token = secrets.token_urlsafe(24)
    app = create_app(session, token=token, port=real_port, reviewer=(reviewer or "").strip() or None)
    config = uvicorn.Config(app, log_level=log_level, access_log=False, server_header=False,
                            date_header=False, lifespan="off")
    return Workbench(uvicorn.Server(config), sock, token, real_port, session)
