"""A tiny web app protected by the official SDK's ``authenticate_request``, on loopback.

It stands for a user's Python application: it knows nothing of the plugin, only
Clerk's public key (``jwt_key``), and it sees a request as signed in when the
SDK accepts its ``__session`` cookie or ``Authorization: Bearer`` token.
"""

from __future__ import annotations

import html
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from clerk_backend_api.security import authenticate_request
from clerk_backend_api.security.types import AuthenticateRequestOptions


def _handler(jwt_key: str) -> type[BaseHTTPRequestHandler]:
    options = AuthenticateRequestOptions(jwt_key=jwt_key)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _who(self) -> dict[str, str] | None:
            request = httpx.Request("GET", "http://app.test/", headers=dict(self.headers.items()))
            state = authenticate_request(request, options)
            if not state.is_signed_in or state.payload is None:
                return None
            return {"user_id": state.payload["sub"], "session_id": state.payload["sid"]}

        def _send(self, status: int, content_type: str, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            who = self._who()
            if path == "/api/me":
                if who is None:
                    self._send(401, "application/json", json.dumps({"error": "signed out"}))
                else:
                    self._send(200, "application/json", json.dumps(who))
            elif path == "/":
                self._send(200, "text/html", "<h1>Public page</h1>")
            else:
                text = f"Signed in as {who['user_id']}" if who else "Signed out"
                self._send(200, "text/html", f"<h1 id='who'>{html.escape(text)}</h1>")

    return Handler


@contextmanager
def serve_protected_app(jwt_key: str) -> Iterator[str]:
    """Serve the app on 127.0.0.1; yield its base URL (``http://localhost:<port>``)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(jwt_key))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://localhost:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
