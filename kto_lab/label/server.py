"""The web page front: ``kto-lab label serve``, for a GPU box reached through a browser.

One page (``page.html``), three routes on :class:`~kto_lab.label.session.LabelSession`:

    GET  /              the page
    GET  /api/state     session.view() as JSON
    POST /api/act       {"action": "like"|"dislike"|"skip"|"undo", "index": i, "labeler": optional} -> view + message
    GET  /image/<i>     queue item i's image, shrunk (only queue items: no path is ever read from a request)

Built on the standard library's ``http.server`` (``ThreadingHTTPServer``): four routes, JSON in and
out, and images looked up by queue index rather than by path, so a web framework would add a
dependency without removing any code that matters for safety. What keeps it safe:

* it binds to loopback (127.0.0.1) by default, and there checks that the ``Host`` header names loopback
  (a page on another site cannot reach it through DNS rebinding);
* bound to any other address it prints a one-line warning and requires a token (random, in the URL it
  prints) on every request; ``--token`` sets one on loopback too;
* a POST must be ``application/json`` from the page's own origin (a cross-site form or fetch cannot
  label for you), and bodies are small; the page may not be framed, and sends no referrer.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import re
import secrets
import socket
import socketserver
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Optional
from urllib.parse import parse_qs, urlsplit

from ..config import UserError
from ..data.tables import ImageLoadError
from .session import KEYS, LabelSession

__all__ = ["LabelServer", "serve", "announce", "is_loopback"]

DEFAULT_PORT = 8765
MAX_BODY = 4096  # bytes: an action is a few dozen
IMAGE_PATH = re.compile(r"^/image/(\d{1,9})$")
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
PAGE_POLICY = ("default-src 'none'; img-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; "
               "script-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class LabelServer(ThreadingHTTPServer):
    """An HTTP server for one session. ``port=0`` picks a free port (see :attr:`url`).
    :meth:`start` runs it in a background thread (what a round or a test does); :func:`serve` in the foreground."""

    daemon_threads = True

    def __init__(self, session: LabelSession, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 token: Optional[str] = None):
        self.session = session
        self.loopback = is_loopback(host)
        self.token = token or (None if self.loopback else secrets.token_urlsafe(18))
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host.strip("[]"), int(port)), Handler)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise UserError(f"port {port} on {host} is in use (another kto-lab label serve?); choose another "
                                "with --port N, or --port 0 for any free one") from None
            if exc.errno in (errno.EADDRNOTAVAIL, errno.EACCES) or isinstance(exc, socket.gaierror):
                raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
            raise
        self.host = host
        self.page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")
        self._thread: Optional[threading.Thread] = None

    def server_bind(self) -> None:
        # HTTPServer.server_bind also looks up the host's domain name, which can hang on a closed network.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    @property
    def port(self) -> int:
        return self.server_address[1]

    @property
    def url(self) -> str:
        """The page's address (with the token, if one is needed)."""
        host = self.host if self.loopback or self.host not in ("0.0.0.0", "::") else socket.gethostname()
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/" + (f"?token={self.token}" if self.token else "")

    def host_allowed(self, header: str) -> bool:
        """On loopback, a request's ``Host`` must name loopback (any port: an SSH tunnel may forward another)."""
        name = header.rsplit(":", 1)[0] if not header.endswith("]") else header
        return name in ("127.0.0.1", "localhost", "[::1]")

    def start(self) -> "LabelServer":
        """Serve in a daemon thread; returns self (``stop()`` ends it)."""
        self._thread = threading.Thread(target=self.serve_forever, name="kto-lab-label", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join()


class Handler(BaseHTTPRequestHandler):
    server: LabelServer
    server_version = "kto-lab-label"
    sys_version = ""

    def log_message(self, format, *args) -> None:  # quiet: the terminal shows progress, not requests
        pass

    # --- responses ------------------------------------------------------------------------------

    def _send(self, status: int, body: bytes, content_type: str, extra: Optional[dict] = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**SECURITY_HEADERS, **(extra or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value, status: int = HTTPStatus.OK) -> None:
        self._send(status, json.dumps(value).encode("utf-8"), "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json({"error": message}, status)

    # --- access ---------------------------------------------------------------------------------

    def _allowed(self) -> bool:
        """Host check on loopback, token check where a token is set; answers 403 when refused."""
        server = self.server
        if server.loopback and not server.host_allowed(self.headers.get("Host", "")):
            self._error(HTTPStatus.FORBIDDEN, "unexpected Host header (the page serves its loopback address only)")
            return False
        if server.token:
            given = self.headers.get("X-Token") or parse_qs(urlsplit(self.path).query).get("token", [""])[0]
            if not hmac.compare_digest(given.encode(), server.token.encode()):
                self._error(HTTPStatus.FORBIDDEN, "missing or wrong token: open the URL that kto-lab label serve printed")
                return False
        return True

    # --- routes ---------------------------------------------------------------------------------

    def do_GET(self) -> None:
        if not self._allowed():
            return
        path = urlsplit(self.path).path
        session = self.server.session
        if path == "/":
            config = {"keys": KEYS, "labeler": session.labeler, "decisions": session.log.path.name}
            page = self.server.page.replace("{{CONFIG}}", json.dumps(config).replace("</", "<\\/"))
            self._send(HTTPStatus.OK, page.encode("utf-8"), "text/html; charset=utf-8",
                       {"Content-Security-Policy": PAGE_POLICY})
        elif path == "/api/state":
            self._json(session.view())
        elif match := IMAGE_PATH.match(path):
            i = int(match.group(1))
            if i >= len(session.queue):
                return self._error(HTTPStatus.NOT_FOUND, f"no image {i} in the queue")
            try:
                data, mime = session.preview(i)
            except ImageLoadError as exc:
                return self._error(HTTPStatus.NOT_FOUND, str(exc))
            self._send(HTTPStatus.OK, data, mime)
        else:
            self._error(HTTPStatus.NOT_FOUND, f"no such page {path!r}")

    def do_POST(self) -> None:
        if not self._allowed():
            return
        if urlsplit(self.path).path != "/api/act":
            return self._error(HTTPStatus.NOT_FOUND, "POST goes to /api/act")
        origin = self.headers.get("Origin")
        if origin is not None and origin != f"http://{self.headers.get('Host', '')}":
            return self._error(HTTPStatus.FORBIDDEN, f"cross-origin request from {origin} refused")
        if self.headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            return self._error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "send the action as application/json")
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            return self._error(HTTPStatus.BAD_REQUEST, f"the body must be 1..{MAX_BODY} bytes of JSON")
        try:
            body = json.loads(self.rfile.read(length))
            action, index, labeler = body["action"], body.get("index"), body.get("labeler")
            if labeler is not None and not (isinstance(labeler, str) and 0 < len(labeler.strip()) <= 64):
                raise ValueError(f"labeler {labeler!r} must be a name of 1..64 characters")
            if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
                raise ValueError(f"index {index!r} must be an integer")
            message = self.server.session.act(action, index, labeler and labeler.strip())
        except (ValueError, KeyError, TypeError) as exc:
            return self._error(HTTPStatus.BAD_REQUEST, f"bad action: {exc}")
        self._json({**self.server.session.view(), "message": message})

    def do_OPTIONS(self) -> None:  # no CORS: a cross-origin preflight gets no permission
        self._error(HTTPStatus.METHOD_NOT_ALLOWED, "cross-origin requests are not allowed")


def announce(server: LabelServer) -> None:
    """What ``kto-lab label serve`` prints when it starts: the warning off loopback, the queue, the URL."""
    session = server.session
    if not server.loopback:
        print(f"warning: serving on {server.host}:{server.port}, reachable from other machines; every request needs "
              "the token in the URL below, and plain HTTP can be read on the way: prefer an SSH tunnel "
              f"(ssh -L {server.port}:localhost:{server.port} THIS_HOST) with the default --host 127.0.0.1", file=sys.stderr)
    print(f"labeling {session.queue!r} into {session.log.path} as {session.labeler!r}: {session.progress()}")
    for name, reason in session.queue.unreadable:
        print(f"skipped unreadable image {name}: {reason}", file=sys.stderr)
    if session.queue.already_labeled:
        print(f"{session.queue.already_labeled} image(s) are labelled by their folder or sidecar already and not queued "
              "(kto-lab data from-folder writes them as records)")
    print(f"open {server.url}   (keys: L like, D dislike, S skip, U undo; Ctrl-C stops)", flush=True)


def serve(session: LabelSession, host: str = "127.0.0.1", port: int = DEFAULT_PORT, token: Optional[str] = None) -> int:
    """Serve ``session`` until Ctrl-C (or SIGTERM); prints the URL, and the progress when it stops."""
    import signal

    server = LabelServer(session, host, port, token)
    announce(server)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler) if main_thread else None  # as Ctrl-C
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
        server.server_close()
    print(f"stopped: {session.progress()}; decisions in {session.log.path}")
    return 0
