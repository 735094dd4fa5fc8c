"""Every route is on one surface and each surface's guard holds for all of them: checked over app.url_map.

The routes are not listed here by hand, so a route added later is covered automatically,
and one added without a surface fails the first test. Participant routes answer the web
client, which sends no token (optionally only from ALLOWED_CLIENTS); researcher routes
need the token, or with none set answer this machine only; the probes answer anyone. The
dashboard's pages take the token or the dashboard pass (a cookie its login form gives),
redirecting to the form without either, or with no token set answer this machine only;
its login, logout and stylesheet answer anyone.
"""
from __future__ import annotations

import pytest
from werkzeug.routing import BuildError, Rule

from apps.openapi import build_document
from config import from_env
from core.security import (
    DASHBOARD, DASHBOARD_COOKIE, DASHBOARD_LOGIN, PAGES, PARTICIPANT, PROBE, RESEARCHER, SURFACES, surface_of,
)
from tests.openapi_support import api_rules, template

TOKEN = "route-check-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LOCAL = {"REMOTE_ADDR": "127.0.0.1"}
STRANGER = {"REMOTE_ADDR": "203.0.113.7"}
STUDY_LAN = {"REMOTE_ADDR": "10.1.2.3"}
REFUSED = {401, 403}


def sample_path(app, rule: Rule) -> str:
    """Return a concrete path for `rule`, trying a string and then a number for each variable."""
    adapter = app.url_map.bind("localhost")
    for sample in ("sample", 1):
        try:
            path = adapter.build(rule.endpoint, {name: sample for name in rule.arguments})
        except (BuildError, ValueError):  # an <int:...> converter cannot write "sample"
            continue
        # A rule's own method: OPTIONS (and HEAD) match the first rule of a path that has several.
        method = min(rule.methods - {"OPTIONS", "HEAD"})
        if adapter.match(path, method=method)[0] == rule.endpoint:
            return path
    raise AssertionError(f"no sample path for {rule.rule}")


def calls(app) -> list[tuple[str, str, str]]:
    """Return (surface, method, path) for every rule and method of `app`, preflights left out."""
    return [(surface_of(app, rule.endpoint), method, sample_path(app, rule)) for rule in app.url_map.iter_rules()
            for method in sorted(rule.methods - {"OPTIONS"})]


def statuses(app, environ: dict[str, str], headers: dict[str, str] | None = None,
             cookies: dict[str, str] | None = None) -> dict[str, set[tuple]]:
    """Return, per surface, the (method, path, status, Location) of calling every route from `environ`."""
    client = app.test_client()
    for name, value in (cookies or {}).items():
        client.set_cookie(name, value)  # the client's jar writes the Cookie header, over any given
    seen: dict[str, set[tuple]] = {surface: set() for surface in SURFACES}
    for surface, method, path in calls(app):
        response = client.open(path, method=method, environ_base=environ, headers=headers or {})
        if method != "HEAD" and response.status_code in REFUSED and surface in PAGES:
            assert response.mimetype == "text/html", (method, path)  # a page for the browser that asked
        elif method != "HEAD" and response.status_code in REFUSED:
            answer = response.get_json()
            assert answer["success"] is False and answer["code"] == 1 and answer["data"] is None, (method, path)
        seen[surface].add((method, path, response.status_code, response.headers.get("Location", "")))
        response.close()  # a streamed answer (the study export) holds a file until closed
    return seen


def refused(seen: set[tuple], status: int | None = None) -> bool:
    """Return whether every call in `seen` was refused (with `status`, if given)."""
    return all(code == status if status else code in REFUSED for _, _, code, _ in seen)


def passed(seen: set[tuple]) -> bool:
    """Return whether no call in `seen` was refused."""
    return all(code not in REFUSED for _, _, code, _ in seen)


def opened(seen: set[tuple]) -> bool:
    """Return whether every dashboard page in `seen` answered: none refused, none sent to the login form."""
    return passed(seen) and not any(sent_to_login(code, location) for _, _, code, location in seen)


def sent_to_login(code: int, location: str) -> bool:
    """Return whether an answer redirects to the dashboard's login form."""
    return code == 303 and location.startswith("/study/login")


def all_sent_to_login(seen: set[tuple]) -> bool:
    """Return whether every call in `seen` (there are some) was redirected to the login form."""
    return bool(seen) and all(sent_to_login(code, location) for _, _, code, location in seen)


def dashboard_pass(app, token: str = TOKEN) -> str:
    """Sign in at the dashboard's login form with `token`; return the pass its cookie holds."""
    response = app.test_client().post("/study/login", data={"token": token})
    assert response.status_code == 303
    cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{DASHBOARD_COOKIE}=")
    return cookie.split(";", 1)[0].split("=", 1)[1]


def test_every_route_declares_its_surface(app):
    undeclared = [rule.rule for rule in app.url_map.iter_rules() if surface_of(app, rule.endpoint) not in SURFACES]
    assert undeclared == []


def test_the_participant_routes_are_the_clients_and_the_probes_the_operators(app):
    rules = {surface: {rule.rule for rule in app.url_map.iter_rules() if surface_of(app, rule.endpoint) == surface}
             for surface in SURFACES}
    assert rules[PARTICIPANT] == {"/ping", "/paint/start", "/paint/save", "/generate"}
    assert rules[PROBE] == {"/healthz", "/readyz"}
    assert {"/metrics", "/generations", "/images/<key>", "/paint/history", "/openapi.json", "/docs"} <= rules[RESEARCHER]
    assert rules[DASHBOARD_LOGIN] == {"/study/login", "/study/logout", "/study/assets/<name>"}
    assert {"/study", "/study/participants/<path:username>", "/study/generations/<record_id>", "/study/thumbnails/<key>",
            "/study/images/<key>", "/study/export.zip"} <= rules[DASHBOARD]
    study = {rule.rule for rule in app.url_map.iter_rules() if rule.rule.startswith("/study")}
    assert study == rules[DASHBOARD] | rules[DASHBOARD_LOGIN]


def test_the_dashboards_pages_are_not_in_the_document(app):
    assert not [path for path in build_document()["paths"] if path.startswith("/study")]
    assert len(api_rules(app)) < len(list(app.url_map.iter_rules()))


def test_the_document_says_which_operations_need_the_token(app):
    document = build_document()
    for rule in api_rules(app):
        surface = surface_of(app, rule.endpoint)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = document["paths"][template(rule.rule)][method.lower()]
            security = operation.get("security", document["security"])
            assert ({"bearerAuth": []} in security) == (surface == RESEARCHER), (method, rule.rule)
            documented = set(operation["responses"])
            expected = {"401", "403"} if surface == RESEARCHER else {"403"} if surface == PARTICIPANT else set()
            assert documented & {"401", "403"} == expected, (method, rule.rule)


def test_with_a_token_only_the_researcher_routes_and_the_dashboard_need_it(make_gen_app):
    app = make_gen_app(API_TOKEN=TOKEN)
    for environ in (LOCAL, STRANGER):  # the token is needed from this machine too
        bare = statuses(app, environ)
        assert refused(bare[RESEARCHER], 401)
        assert all_sent_to_login(bare[DASHBOARD])
        assert passed(bare[PARTICIPANT]) and passed(bare[PROBE]) and passed(bare[DASHBOARD_LOGIN])
    with_token = statuses(app, STRANGER, AUTH)
    assert passed(with_token[RESEARCHER]) and opened(with_token[DASHBOARD])


def test_the_dashboard_pass_opens_the_dashboard_and_nothing_else(make_gen_app):
    app = make_gen_app(API_TOKEN=TOKEN)
    with_pass = statuses(app, STRANGER, cookies={DASHBOARD_COOKIE: dashboard_pass(app)})
    assert opened(with_pass[DASHBOARD])
    assert refused(with_pass[RESEARCHER], 401)  # the JSON API reads no cookie
    forged = statuses(app, STRANGER, cookies={DASHBOARD_COOKIE: TOKEN})  # the raw token is no pass
    assert all_sent_to_login(forged[DASHBOARD])
    other = dashboard_pass(make_gen_app(API_TOKEN="another-token"), "another-token")
    assert all_sent_to_login(statuses(app, STRANGER, cookies={DASHBOARD_COOKIE: other})[DASHBOARD])


def test_without_a_token_the_researcher_routes_answer_this_machine_only(make_gen_app):
    app = make_gen_app()
    away = statuses(app, STRANGER)
    assert refused(away[RESEARCHER], 403) and refused(away[DASHBOARD], 403)
    assert passed(away[PARTICIPANT]) and passed(away[PROBE])
    local = statuses(app, LOCAL)
    assert passed(local[RESEARCHER]) and opened(local[DASHBOARD]) and passed(local[DASHBOARD_LOGIN])
    for environ in ({"REMOTE_ADDR": "::1"}, {"REMOTE_ADDR": "::ffff:127.0.0.1"}):
        seen = statuses(app, environ)
        assert passed(seen[RESEARCHER]) and opened(seen[DASHBOARD])


def test_allowed_clients_limits_the_participant_routes_only(make_gen_app):
    app = make_gen_app(**from_env({"ALLOWED_CLIENTS": "10.0.0.0/8, 192.168.7.1/24"}))
    away = statuses(app, STRANGER)
    assert refused(away[PARTICIPANT], 403) and passed(away[PROBE])
    assert passed(statuses(app, STUDY_LAN)[PARTICIPANT])
    assert passed(statuses(app, {"REMOTE_ADDR": "192.168.7.200"})[PARTICIPANT])
    assert passed(statuses(app, LOCAL)[RESEARCHER])  # researchers are checked by their own rule


def test_a_path_with_no_route_is_a_researcher_route(make_app):
    stranger = make_app().test_client().get("/no/such/route", environ_base=STRANGER)
    assert stranger.status_code == 403 and "API_TOKEN" in stranger.get_json()["message"]
    assert make_app(API_TOKEN=TOKEN).test_client().get("/no/such/route").status_code == 401
    assert make_app().test_client().get("/no/such/route").status_code == 404  # on this machine


@pytest.mark.parametrize("proxies, environ, forwarded, admitted", [
    (0, LOCAL, "127.0.0.1", False),           # a local proxy relaying someone: not this machine
    (1, LOCAL, "203.0.113.7", False),         # the proxy's client is a stranger
    (1, LOCAL, "127.0.0.1", True),            # a researcher on the machine, through the proxy
    (1, STUDY_LAN, "127.0.0.1", False),       # a forged header from another machine
])
def test_this_machine_means_the_peer_and_the_forwarded_client_are_both_loopback(make_app, proxies, environ,
                                                                                 forwarded, admitted):
    client = make_app(TRUSTED_PROXIES=proxies).test_client()
    response = client.get("/metrics", environ_base=environ, headers={"X-Forwarded-For": forwarded})
    assert (response.status_code == 200) == admitted, response.get_data(as_text=True)


def test_the_token_is_never_read_from_the_query_string(make_app):
    client = make_app(API_TOKEN=TOKEN).test_client()
    assert client.get("/metrics", query_string={"token": TOKEN}).status_code == 401
    assert client.get("/metrics", query_string={"api_token": TOKEN}).status_code == 401


@pytest.mark.parametrize("settings, environ, headers, detailed", [
    ({}, LOCAL, {}, True),
    ({}, STRANGER, {}, False),
    ({"API_TOKEN": TOKEN}, LOCAL, {}, False),
    ({"API_TOKEN": TOKEN}, STRANGER, AUTH, True),
])
def test_readiness_details_go_to_researchers_only(make_gen_app, settings, environ, headers, detailed):
    response = make_gen_app(**settings).test_client().get("/readyz", environ_base=environ, headers=headers)
    answer = response.get_json()
    assert response.status_code == 200 and answer["success"] is True
    assert (answer["data"] is not None) == detailed
    assert answer["message"] == "ready" if detailed else answer["message"].startswith("ready (details for researchers")


def test_a_wrong_method_is_judged_by_the_route_it_names(make_app):
    client = make_app(API_TOKEN=TOKEN).test_client()
    assert client.get("/paint/start", environ_base=STRANGER).status_code == 405  # a participant route
    assert client.delete("/generations", environ_base=STRANGER).status_code == 401  # a researcher route
    assert client.delete("/generations", environ_base=STRANGER, headers=AUTH).status_code == 405
