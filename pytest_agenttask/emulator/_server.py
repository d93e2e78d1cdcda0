"""HTTP/1.1 plumbing: a threaded loopback server that hands parsed requests to a callable.

Keep-alive works (``protocol_version`` is HTTP/1.1 and every answer has a
``Content-Length``). The server never logs: request lines carry tickets.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ._app import Request, Response
from ._errors import ApiError

__all__ = ["MAX_BODY_BYTES", "LoopbackServer"]

MAX_BODY_BYTES = 1 << 20
_MAX_DISCARD_BYTES = 16 << 20  # a larger body is not read: the connection is cut
App = Callable[[Request], "Response | None"]


def _malformed(long_message: str) -> ApiError:
    return ApiError.single(
        400,
        "malformed_request_parameters",
        "Malformed request parameters",
        long_message,
        close=True,
    )


def _too_large(*, close: bool) -> ApiError:
    return ApiError.single(
        413,
        "request_body_too_large",
        "Request body too large",
        f"The request body exceeds the maximum allowed size of {MAX_BODY_BYTES} bytes.",
        close=close,
    )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "clerk-emulator"
    sys_version = ""
    timeout = 120  # seconds an idle keep-alive connection is kept
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: LoopbackServer
    connection_number: int  # this connection's number on its listener, from 1
    requests_served: int

    def setup(self) -> None:
        super().setup()
        self.connection_number = self.server.track(self)
        self.requests_served = 0

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self)

    def log_message(self, format: str, *args: Any) -> None:
        """Silent on purpose: a request line may hold a ticket."""

    def _serve(self) -> None:
        path, _, query = self.path.partition("?")
        body, framing_error = self._read_body()
        self.requests_served += 1
        request = Request(
            method=self.command,
            path=path,
            query=query,
            headers={name.lower(): value for name, value in reversed(self.headers.items())},
            body=body,
            framing_error=framing_error,
            connection=self.connection_number,
            new_connection=self.requests_served == 1,
        )
        response = self.server.app(request)
        if response is None:  # drop: close without answering
            self.close_connection = True
            return
        self._send(response)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_HEAD = _serve

    def _read_body(self) -> tuple[bytes, ApiError | None]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b"", None
        try:
            size = int(length)
            if size < 0:
                raise ValueError(length)
        except ValueError:
            return b"", _malformed("The Content-Length header is invalid.")
        if size > _MAX_DISCARD_BYTES:
            return b"", _too_large(close=True)
        if size > MAX_BODY_BYTES:
            # Read it anyway so that the client, still sending, gets the answer.
            while size > 0:
                chunk = self.rfile.read(min(size, 1 << 16))
                if not chunk:
                    break
                size -= len(chunk)
            return b"", _too_large(close=False)
        return self.rfile.read(size), None

    def _read_chunked(self) -> tuple[bytes, ApiError | None]:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                return b"", _malformed("The chunked request body is malformed.")
            if size == 0:
                while self.rfile.readline(1024).strip():  # trailers
                    pass
                return b"".join(chunks), None
            total += size
            if total > MAX_BODY_BYTES:
                return b"", _too_large(close=True)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)

    def _send(self, response: Response) -> None:
        try:
            self.send_response(response.status)
            for name, value in response.headers:
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(response.body)))
            if response.close:
                self.send_header("Connection", "close")
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(response.body)
        except OSError:  # the client went away (e.g. it timed out during a delay)
            self.close_connection = True


class LoopbackServer(ThreadingHTTPServer):
    """A threaded server whose open connections can be cut when it stops."""

    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        app: App,
        *,
        on_error: Callable[[BaseException], None],
        on_connect: Callable[[], None] | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.app = app
        self._on_error = on_error
        self._connections: dict[_Handler, threading.Thread] = {}
        self._connections_lock = threading.Lock()
        self._connection_numbers = 0
        self._on_connect = on_connect
        super().__init__(address, _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def server_bind(self) -> None:
        # HTTPServer.server_bind would resolve the host's FQDN, which can be slow.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def track(self, handler: _Handler) -> int:
        """Register a new connection; returns its number (from 1)."""
        with self._connections_lock:
            self._connections[handler] = threading.current_thread()
            self._connection_numbers += 1
            number = self._connection_numbers
        if self._on_connect is not None:
            self._on_connect()
        return number

    @property
    def open_connections(self) -> int:
        """How many connections are open now."""
        with self._connections_lock:
            return len(self._connections)

    def untrack(self, handler: _Handler) -> None:
        with self._connections_lock:
            self._connections.pop(handler, None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        error = sys.exc_info()[1]
        if error is not None and not isinstance(error, OSError):
            self._on_error(error)

    def close_connections(self) -> None:
        """Cut every open connection, so that keep-alive handler threads end."""
        with self._connections_lock:
            handlers = list(self._connections)
        for handler in handlers:
            with contextlib.suppress(OSError):
                handler.connection.shutdown(socket.SHUT_RDWR)

    def join_connections(self, deadline: float) -> None:
        with self._connections_lock:
            threads = list(self._connections.values())
        for thread in threads:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
