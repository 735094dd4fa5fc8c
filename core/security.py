"""Who may call the API: CORS for the browser client and the optional bearer token."""
from __future__ import annotations

import hmac

from flask import Flask, request
from flask_cors import CORS

from core.envelope import ApiError

# Probes and preflights must work without the token: browsers never send Authorization
# on an OPTIONS preflight, and load balancers poll health routes anonymously.
OPEN_PATHS = {"/ping", "/healthz", "/readyz"}


class Unauthorized(ApiError):
    """The request lacks the bearer token the server requires."""

    status = 401


def _require_token(token: str) -> None:
    if request.method == "OPTIONS" or request.path in OPEN_PATHS:
        return
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("missing or wrong bearer token: send Authorization: Bearer <API_TOKEN>")


def init_app(app: Flask) -> None:
    """Enable CORS for `CORS_ORIGINS` and, when `API_TOKEN` is set, require it on every route."""
    CORS(
        app,
        origins=app.config["CORS_ORIGINS"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["X-Request-ID"],
        max_age=600,
    )
    token = app.config.get("API_TOKEN")
    if token:
        app.before_request(lambda: _require_token(token))
