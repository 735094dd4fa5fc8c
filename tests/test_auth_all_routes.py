"""With API_TOKEN set, every route but the probes needs the token: checked over app.url_map.

The routes are not listed here by hand, so a route added later is covered automatically.
Only /ping, /healthz and /readyz stay open (load balancers probe anonymously); /metrics
is not (Prometheus sends the token as a bearer token).
"""
from __future__ import annotations

import pytest
from werkzeug.routing import BuildError, Rule

TOKEN = "route-check-token"
OPEN = {"/ping", "/healthz", "/readyz"}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def locked(make_gen_app):
    """An app that requires API_TOKEN, wired to the simulators."""
    return make_gen_app(API_TOKEN=TOKEN)


def sample_path(app, rule: Rule) -> str:
    """Return a concrete path for `rule`, trying a string and then a number for each variable."""
    adapter = app.url_map.bind("localhost")
    for sample in ("sample", 1):
        try:
            path = adapter.build(rule.endpoint, {name: sample for name in rule.arguments})
        except BuildError:
            continue
        if adapter.match(path, method=next(iter(rule.methods)))[0] == rule.endpoint:
            return path
    raise AssertionError(f"no sample path for {rule.rule}")


def calls(app) -> list[tuple[str, str]]:
    """Return (method, path) for every rule and method of `app`, preflights left out."""
    return [(method, sample_path(app, rule)) for rule in app.url_map.iter_rules()
            for method in sorted(rule.methods - {"OPTIONS"})]


def test_every_closed_route_is_401_without_the_token_and_passes_with_it(locked):
    client = locked.test_client()
    checked = calls(locked)
    assert {path for _, path in checked} >= OPEN | {"/metrics", "/generate", "/paint/save"}
    for method, path in checked:
        bare, authorised = client.open(path, method=method), client.open(path, method=method, headers=AUTH)
        if path in OPEN:
            assert bare.status_code != 401, (method, path)
            continue
        assert bare.status_code == 401, (method, path)
        if method != "HEAD":
            answer = bare.get_json()
            assert answer["success"] is False and answer["code"] == 1 and answer["data"] is None, (method, path)
        assert authorised.status_code != 401, (method, path, authorised.get_data(as_text=True))


def test_the_probes_are_open_and_metrics_is_not(locked):
    client = locked.test_client()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200
    assert client.get("/metrics").status_code == 401
    response = client.get("/metrics", headers=AUTH)
    assert response.status_code == 200 and "refinity_http_requests_total" in response.get_data(as_text=True)


def test_an_unknown_path_needs_the_token_too(locked):
    response = locked.test_client().get("/no/such/route")
    assert response.status_code == 401 and response.get_json()["code"] == 1
