"""A small Flask app protected with Clerk the way Python apps are: the official SDK's
``authenticate_request`` checks every request (the ``__session`` cookie or an
``Authorization: Bearer`` session token).

Routes:

- ``/`` and ``/sign-in``: public pages;
- ``/dashboard`` and ``/settings``: pages for signed-in users (others are sent to ``/sign-in``);
- ``/api/notes``: JSON for signed-in users, ``GET`` lists and ``POST`` adds (401 otherwise);
- ``/api/me``: who is signed in, if anyone (public).

It also resolves Clerk's *development handshake*, as Clerk's JavaScript middleware
does and the Python SDK does not: after signing someone in (an Agent Task URL, or
Clerk's sign-in page), a development instance redirects to the app with a
``__clerk_handshake`` query parameter, a JWT whose ``handshake`` claim lists the
``Set-Cookie`` lines (``__session``...) the app is to set. Without this, a browser
lands on a Python app signed out.
"""

from __future__ import annotations

import functools
import html
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from urllib.parse import parse_qsl, urlencode

from clerk_backend_api.security import authenticate_request, verify_token
from clerk_backend_api.security.types import (
    AuthenticateRequestOptions,
    TokenVerificationError,
    VerifyTokenOptions,
)
from flask import Flask, Response, g, jsonify, redirect, request, url_for
from flask.typing import ResponseReturnValue

__all__ = ["HANDSHAKE_PARAMS", "Auth", "create_app"]

#: The query parameters Clerk's middleware removes once the handshake is resolved.
HANDSHAKE_PARAMS = (
    "__clerk_handshake",
    "__clerk_help",
    "__clerk_db_jwt",
    "__clerk_handshake_nonce",
)

View = TypeVar("View", bound=Callable[..., ResponseReturnValue])


@dataclass(frozen=True)
class Auth:
    """The signed-in user, from the claims of a verified session token."""

    user_id: str
    session_id: str
    actor: dict[str, Any] | None  # {"type": "agent", ...} for a session an Agent Task opened


def create_app(clerk: AuthenticateRequestOptions) -> Flask:
    """The app, trusting the session tokens ``clerk`` verifies: ``jwt_key=`` (a PEM
    public key, networkless) or ``secret_key=`` (Clerk's JWKS, fetched and cached)."""
    app = Flask(__name__)
    notes: dict[str, list[str]] = {}
    notes_lock = threading.Lock()

    @app.before_request
    def resolve_clerk_handshake() -> ResponseReturnValue | None:
        token = request.args.get("__clerk_handshake")
        if token is None:
            return None
        # The handshake is signed with the instance's key, like session tokens.
        options = VerifyTokenOptions(jwt_key=clerk.jwt_key, secret_key=clerk.secret_key)
        try:
            claims = verify_token(token, options)
        except TokenVerificationError as error:
            return Response(f"Invalid Clerk handshake: {error}\n", 401, mimetype="text/plain")
        query = [
            (name, value)
            for name, value in parse_qsl(request.query_string.decode(), keep_blank_values=True)
            if name not in HANDSHAKE_PARAMS
        ]
        location = request.base_url + (f"?{urlencode(query)}" if query else "")
        response = redirect(location, 307)
        for line in claims.get("handshake", []):
            response.headers.add("Set-Cookie", line)
        response.headers["Cache-Control"] = "no-store"
        return response

    def current_user() -> Auth | None:
        """The user of this request's session token, if the SDK accepts it (once per request)."""
        if "auth" not in g:
            state = authenticate_request(request, clerk)
            g.auth = None
            if state.is_signed_in:
                claims = state.payload
                g.auth = Auth(claims["sub"], claims["sid"], claims.get("act"))
        return cast("Auth | None", g.auth)

    def sign_in_required(view: View) -> View:
        """Pages send signed-out visitors to ``/sign-in``; JSON routes answer 401."""

        @functools.wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> ResponseReturnValue:
            if current_user() is not None:
                return view(*args, **kwargs)
            if request.path.startswith("/api/"):
                return jsonify(error="signed out"), 401
            return redirect(url_for("sign_in", redirect_url=request.url))

        return cast("View", guarded)

    def page(title: str, body: str) -> str:
        title = html.escape(title)
        return f"<!doctype html><title>{title}</title><h1>{title}</h1>{body}"

    def who() -> str:
        auth = current_user()
        assert auth is not None
        return f"<p id='who'>Signed in as {html.escape(auth.user_id)}</p>"

    @app.get("/")
    def home() -> str:
        return page("Notes", "<p>Welcome! <a href='/dashboard'>Your dashboard</a></p>")

    @app.get("/sign-in")
    def sign_in() -> str:
        # A real app redirects to Clerk's sign-in page (the Account Portal) here.
        return page("Sign in", "<p id='who'>Signed out</p>")

    @app.get("/dashboard")
    @sign_in_required
    def dashboard() -> str:
        return page("Dashboard", who())

    @app.get("/settings")
    @sign_in_required
    def settings() -> str:
        return page("Settings", who())

    @app.get("/api/me")
    def me() -> ResponseReturnValue:
        auth = current_user()
        if auth is None:
            return jsonify(signed_in=False)
        return jsonify(
            signed_in=True, user_id=auth.user_id, session_id=auth.session_id, actor=auth.actor
        )

    @app.route("/api/notes", methods=["GET", "POST"])
    @sign_in_required
    def user_notes() -> ResponseReturnValue:
        auth = current_user()
        assert auth is not None
        with notes_lock:
            mine = notes.setdefault(auth.user_id, [])
            if request.method == "POST":
                mine.append(str(request.get_json(force=True)["text"]))
                return jsonify(notes=list(mine)), 201
            return jsonify(notes=list(mine))

    return app
