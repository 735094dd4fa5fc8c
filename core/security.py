"""Who may call the API, and how much: the surfaces, CORS for the browser client, and a
per-client budget (token bucket) for the expensive POST /generate.

**Surfaces.** Every route declares once, with a decorator on its view, which surface it is on:

- `participant`: the routes the unmodified web client calls (it sends no token). They answer
  any client, or with `ALLOWED_CLIENTS` set only clients in those networks (403 otherwise).
- `researcher`: records, images, save history, metrics and the API's own documentation. They
  need `Authorization: Bearer <API_TOKEN>` (401 otherwise); while no API_TOKEN is set they
  answer only clients on this machine (403 otherwise, saying how to set a token). The token is
  never read from the query string, which proxies and browsers write into their logs.
- `probe`: /healthz and /readyz, which load balancers poll anonymously from anywhere; /readyz
  gives its details only to whoever would pass the researcher check.
- `dashboard`: the researchers' HTML pages under /study (apps.study). A browser sends no
  bearer header, so besides it they take the dashboard pass, an HttpOnly cookie that the
  login form gives for the right token: `DASHBOARD_COOKIE`, an HMAC of its issue time keyed
  by API_TOKEN (never the token itself), good for `PASS_SECONDS` or until the token changes.
  Without either they raise `LoginRequired`, which the dashboard answers with its login
  form; while no API_TOKEN is set they answer only clients on this machine, as researcher
  routes do. The pass is read on these routes only, never on the JSON API.
- `dashboard_login`: the dashboard's login and logout, which answer anyone: they take a
  token and show nothing of the study.

A route with no surface, and any path that matches no route, is treated as a researcher route
(a wrong method on a route is that route's surface, so it answers 405).
"On this machine" means the TCP peer and the client address are both loopback; without
TRUSTED_PROXIES a loopback peer that forwards X-Forwarded-For is a local proxy relaying
someone else, so it does not count.

The client address is the TCP peer, or behind TRUSTED_PROXIES reverse proxies the address
they forward (core.factory applies ProxyFix). The /generate budget is off by default;
`GENERATE_RATE_LIMIT` sets how many requests per minute one client address may start. A
client over its budget gets 429 in the envelope with `Retry-After`. The budgets are token
buckets of the server's shared state (core.shared), so with REDIS_URL set a client has one
budget however many processes and hosts its requests reach.
"""
from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import time
from collections.abc import Callable
from typing import TypeVar

from flask import Flask, current_app, request
from flask_cors import CORS
from werkzeug.exceptions import MethodNotAllowed

from core import shared
from core.envelope import ApiError
from core.shared import Bucket

log = logging.getLogger(__name__)

EXTENSION = "generate_rate_limit"

PARTICIPANT, RESEARCHER, PROBE = "participant", "researcher", "probe"
DASHBOARD, DASHBOARD_LOGIN = "dashboard", "dashboard_login"
SURFACES = (PARTICIPANT, RESEARCHER, PROBE, DASHBOARD, DASHBOARD_LOGIN)
PAGES = (DASHBOARD, DASHBOARD_LOGIN)  # HTML for people: not the JSON API, nor in its OpenAPI document
_SURFACE = "surface"  # the attribute a view's surface is declared in

View = TypeVar("View", bound=Callable)


def _declare(surface: str) -> Callable[[View], View]:
    def declare(view: View) -> View:
        setattr(view, _SURFACE, surface)
        return view
    declare.__doc__ = f"Put the view on the {surface} surface."
    return declare


participant = _declare(PARTICIPANT)
researcher = _declare(RESEARCHER)
probe = _declare(PROBE)
dashboard = _declare(DASHBOARD)
dashboard_login = _declare(DASHBOARD_LOGIN)

DASHBOARD_COOKIE = "refinity_study_pass"
PASS_SECONDS = 12 * 3600  # a study session's day: a pass left in a shared browser expires
_PASS_PURPOSE = b"refinity study dashboard pass:"  # so the HMAC is of use for nothing else


def surface_of(app: Flask, endpoint: str | None) -> str | None:
    """Return the surface the view of `endpoint` declares, or None."""
    return getattr(app.view_functions.get(endpoint or ""), _SURFACE, None)


class Unauthorized(ApiError):
    """The request lacks the bearer token the server requires."""

    status = 401


class Forbidden(ApiError):
    """The client may not use this route from where it is, or as who it says it is."""

    status = 403


class LoginRequired(Unauthorized):
    """A dashboard page asked for without the dashboard pass or the bearer token."""


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def _address(text: str | None) -> Address | None:
    try:
        address = ipaddress.ip_address(text or "")
    except ValueError:
        return None  # a Unix socket has no address
    # A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d.
    return getattr(address, "ipv4_mapped", None) or address


def client_address() -> Address | None:
    """Return the current client's address (after ProxyFix), or None when there is none."""
    return _address(request.remote_addr)


def _on_this_machine() -> bool:
    if not current_app.config["TRUSTED_PROXIES"] and ("X-Forwarded-For" in request.headers
                                                       or "Forwarded" in request.headers):
        return False
    peer = _address(request.environ.get("werkzeug.proxy_fix.orig", {}).get("REMOTE_ADDR", request.remote_addr))
    client = client_address()
    return bool(peer and peer.is_loopback and client and client.is_loopback)


def token_matches(given: str) -> bool:
    """Return whether `given` is the server's API_TOKEN (False while none is set)."""
    token = current_app.config["API_TOKEN"]
    return bool(token) and hmac.compare_digest(given.strip().encode(), token.encode())


def _bearer_matches() -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and token_matches(given)


def _researcher_refusal() -> ApiError | None:
    """Return why the current request may not use a researcher route, or None if it may."""
    if current_app.config["API_TOKEN"]:
        if _bearer_matches():
            return None
        return Unauthorized("missing or wrong bearer token: send Authorization: Bearer <API_TOKEN>")
    if _on_this_machine():
        return None
    return Forbidden("researcher routes answer only on the server's own machine while it has no API_TOKEN; "
                     "set API_TOKEN on the server and send Authorization: Bearer <API_TOKEN>")


def _pass_mac(issued: str) -> str:
    return hmac.new(current_app.config["API_TOKEN"].encode(), _PASS_PURPOSE + issued.encode(), "sha256").hexdigest()


def dashboard_pass() -> str:
    """Return a new dashboard pass for the cookie: its issue time and the HMAC of it under API_TOKEN."""
    issued = str(int(time.time()))
    return f"{issued}.{_pass_mac(issued)}"


def _pass_valid(value: str) -> bool:
    issued, _, mac = value.partition(".")
    if not issued.isdigit() or not 0 <= time.time() - int(issued) <= PASS_SECONDS:
        return False
    return hmac.compare_digest(mac.encode(), _pass_mac(issued).encode())


def _dashboard_refusal() -> ApiError | None:
    """Return why the current request may not see a dashboard page, or None if it may."""
    if current_app.config["API_TOKEN"]:
        if _bearer_matches() or _pass_valid(request.cookies.get(DASHBOARD_COOKIE, "")):
            return None
        return LoginRequired("the study dashboard needs the server's API_TOKEN: sign in at its login form")
    if _on_this_machine():
        return None
    return Forbidden("the study dashboard answers only on the server's own machine while it has no API_TOKEN; "
                     "set API_TOKEN on the server and sign in with it")


def is_researcher() -> bool:
    """Return whether the current request would pass the researcher check."""
    return _researcher_refusal() is None


def _admit_participant_client() -> None:
    networks = current_app.config["ALLOWED_CLIENTS"]
    address = client_address()
    if networks and not (address and any(address in network for network in networks)):
        raise Forbidden(f"the address {address or '(none)'} may not take part in this study: it is not in "
                        "the server's ALLOWED_CLIENTS")


def _surface() -> str | None:
    """Return the surface of the route the request asks for; a wrong method on it counts as that route."""
    if request.url_rule is not None:
        return surface_of(current_app, request.endpoint)
    error = request.routing_exception
    if not isinstance(error, MethodNotAllowed):
        return None
    # So a wrong method on a participant route answers the honest 405, not a researcher's refusal.
    adapter = current_app.create_url_adapter(request)
    surfaces = {surface_of(current_app, adapter.match(method=method)[0]) for method in error.valid_methods or ()}
    return surfaces.pop() if len(surfaces) == 1 else None


def _guard() -> None:
    if request.method == "OPTIONS":
        return  # CORS preflights: browsers never send credentials on them
    surface = _surface()
    if surface in (PROBE, DASHBOARD_LOGIN):
        return
    if surface == PARTICIPANT:
        _admit_participant_client()
        return
    refusal = _dashboard_refusal() if surface == DASHBOARD else _researcher_refusal()
    if refusal is not None:
        raise refusal


def init_app(app: Flask) -> None:
    """Enable CORS for `CORS_ORIGINS`, guard every route by its surface, and budget /generate."""
    CORS(
        app,
        origins=app.config["CORS_ORIGINS"],
        allow_headers=["Authorization", "Content-Type"],
        expose_headers=["X-Request-ID"],
        max_age=600,
    )
    app.before_request(_guard)
    _init_rate_limit(app)


class RateLimited(ApiError):
    """The client sent more requests than its budget allows."""

    status = 429

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"too many generation requests; retry in {math.ceil(retry_after)} s")
        self.headers["Retry-After"] = str(math.ceil(retry_after))


def client_key() -> str:
    """Return who is asking, for a budget: the client's address."""
    return str(client_address() or "unknown")


def enforce(bucket: Bucket | None) -> None:
    """Raise RateLimited when the current client has no budget left in `bucket`."""
    if bucket is None:
        return
    wait = bucket.take(client_key())
    if wait:
        raise RateLimited(wait)


def _init_rate_limit(app: Flask) -> None:
    """Build the /generate buckets of `app`, in its shared state, when GENERATE_RATE_LIMIT > 0 (else no limit)."""
    per_minute = int(app.config.get("GENERATE_RATE_LIMIT") or 0)
    state = app.extensions[shared.EXTENSION]
    app.extensions[EXTENSION] = state.bucket("generate", per_minute) if per_minute > 0 else None
    if per_minute > 0:
        log.info("rate limit: %d POST /generate per minute per client address", per_minute)


def limit_generate() -> None:
    """Raise RateLimited when the current client has used up its /generate budget."""
    enforce(current_app.extensions.get(EXTENSION))
