"""The OpenAPI document: valid, complete (every route, no phantom one) and true to real answers."""
from __future__ import annotations

import base64
import hashlib
import re

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from pydantic import TypeAdapter, ValidationError

from apps.openapi import build_document
from core.image_store import decode_image
from core.validation import Username
from tests.helpers import PROMPTS, body, save_body, scheme
from tests.openapi_support import (
    operations,
    DOC, JSON, api_rules, assert_valid, check_response, check_spec, component, conforms, is_envelope, request_schema,
    template,
)

TOKEN = "docs-token"
IGNORED_METHODS = {"HEAD", "OPTIONS"}  # answered by Flask and flask-cors for every route


def test_document_is_valid_openapi():
    validate(build_document())


def test_served_document_is_the_built_one(client):
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == JSON
    assert response.get_json() == DOC


def test_every_route_is_documented_and_every_documented_route_exists(app):
    served = {(template(rule.rule), method.lower()) for rule in api_rules(app)
              for method in rule.methods - IGNORED_METHODS}
    documented = {(path, method) for path, method, _ in operations(DOC)}
    assert sorted(served - documented) == [], "routes missing from the document"
    assert sorted(documented - served) == [], "documented routes the server does not have"


def test_path_parameters_are_the_rule_arguments(app):
    for rule in api_rules(app):
        for method in rule.methods - IGNORED_METHODS:
            params = DOC["paths"][template(rule.rule)][method.lower()].get("parameters", [])
            assert {p["name"] for p in params if p["in"] == "path"} == set(rule.arguments), rule.rule


def test_operation_ids_are_unique():
    ids = [op["operationId"] for _, _, op in operations(DOC)]
    assert len(ids) == len(set(ids))


def _examples(media):
    if "example" in media:
        yield "example", media["example"]
    for name, example in media.get("examples", {}).items():
        yield name, example["value"]


@pytest.mark.parametrize("path,method", [(p, m) for p, m, _ in operations(DOC)])
def test_examples_match_their_schemas(path, method):
    op = DOC["paths"][path][method]
    if request_schema(path, method):
        for name, value in _examples(op["requestBody"]["content"][JSON]):
            assert_valid(value, request_schema(path, method), f"{method} {path} request example {name}")
    for status, answer in op["responses"].items():
        answer = component("responses", answer["$ref"].rsplit("/", 1)[-1]) if "$ref" in answer else answer
        for media, content in answer.get("content", {}).items():
            for name, value in _examples(content):
                if media == JSON:
                    assert_valid(value, content["schema"], f"{method} {path} {status} example {name}")


SIGNATURES = [b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF\x00\x00\x00\x00WEBP"]


@settings(max_examples=200, deadline=None, derandomize=True, database=None)
@given(signature=st.sampled_from(SIGNATURES), rest=st.binary(max_size=40),
       header=st.sampled_from(["", "data:image/png;base64,", "data:;base64,", "data:image/jpeg;x=1;base64,"]),
       spaces=st.lists(st.tuples(st.integers(min_value=0), st.sampled_from([" ", "\n", "\t", "\u3000"])), max_size=3))
def test_every_sketch_the_server_reads_fits_the_documented_pattern(signature, rest, header, spaces):
    payload = base64.b64encode(signature + rest).decode()
    for at, space in spaces:  # the decoder drops white space anywhere in the base64
        at %= len(payload) + 1
        payload = payload[:at] + space + payload[at:]
    sketch = header + payload
    decode_image(sketch)  # the server reads it
    assert re.search(component("schemas", "Sketch")["properties"]["designImage"]["pattern"], sketch)


def test_docs_page_loads_swagger_ui_from_this_server_only(client):
    response = client.get("/docs")
    assert response.status_code == 200 and response.mimetype == "text/html"
    check_response("/docs", "get", response)
    page = response.get_data(as_text=True)
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page), "the page must not load anything remote"
    assets = re.findall(r'(?:src|href)="(/docs/assets/[^"]+)"', page)
    assert sorted(assets) == ["/docs/assets/docs.js", "/docs/assets/swagger-ui-bundle.js",
                              "/docs/assets/swagger-ui.css"]
    for asset in assets:
        with client.get(asset) as served:
            assert served.status_code == 200 and len(served.get_data()) > 100, asset
            check_response("/docs/assets/{name}", "get", served)
    with client.get("/docs/assets/swagger-ui-bundle.js") as bundle:
        assert "SwaggerUIBundle" in bundle.get_data(as_text=True)
    csp = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src 'self';" in csp


def test_docs_assets_are_only_the_pages_own(client):
    for name in ("index.html", "..%2Fflask_swagger_ui.py", "swagger-ui.js", "VERSION"):
        response = client.get(f"/docs/assets/{name}")
        assert response.status_code == 404
        check_response("/docs/assets/{name}", "get", response)


@pytest.mark.parametrize("path", ["/openapi.json", "/docs"])
def test_documentation_needs_the_token_when_one_is_set(make_app, path):
    locked = make_app(API_TOKEN=TOKEN).test_client()
    denied = locked.get(path)
    assert denied.status_code == 401
    check_response(path, "get", denied)
    assert locked.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200


def test_session_answers_match_the_document(make_app):
    client = make_app(MAX_CONTENT_LENGTH=4096).test_client()
    calls = [
        ("/paint/start", "post", {"json": {"username": "alice"}}, 200),
        ("/paint/save", "post", {"json": save_body("alice", rapid=[scheme("a")], deep=[scheme("b")])}, 200),
        ("/paint/start", "post", {"json": {"username": "alice"}}, 200),
        ("/paint/history", "get", {"query_string": {"username": "alice", "limit": "5"}}, 200),
        ("/paint/start", "post", {"json": {"username": ""}}, 400),
        ("/paint/start", "post", {"data": "{", "content_type": JSON}, 400),
        ("/paint/save", "post", {"json": save_body("nobody")}, 404),
        ("/paint/history", "get", {"query_string": {"username": "nobody"}}, 404),
        ("/paint/history", "get", {"query_string": {"username": "alice", "page": "2"}}, 400),
        ("/paint/history/{entry_id}", "get", {"path": "/paint/history/not-an-id"}, 400),
        ("/paint/history/{entry_id}", "get", {"path": "/paint/history/" + "0" * 24}, 404),
        ("/paint/start", "get", {}, 405),
        ("/paint/start", "post", {"json": {"username": "x" * 5000}}, 413),
    ]
    for path, method, kwargs, status in calls:
        response = client.open(kwargs.pop("path", path), method=method.upper(), **kwargs)
        assert response.status_code == status, (path, response.get_json())
        check_response(path, method if status != 405 else "post", response)
    entry = client.get("/paint/history", query_string={"username": "alice"}).get_json()["data"]["saves"][0]
    response = client.get(f"/paint/history/{entry['id']}")
    assert response.status_code == 200
    check_response("/paint/history/{entry_id}", "get", response)


def test_unknown_routes_and_methods_answer_the_documented_failures(client):
    check_spec(client.get("/no/such/route"), component("responses", "NotFound"), "unknown route")
    wrong = client.delete("/generate")
    assert wrong.status_code == 405 and "POST" in wrong.headers["Allow"]
    check_response("/generate", "post", wrong)


def test_generate_answers_of_every_type_match_the_document(gen_client):
    for type_, prompts in PROMPTS.items():
        response = gen_client.post("/generate", json=body(type_, prompts))
        assert response.status_code == 200, response.get_json()
        check_response("/generate", "post", response)
    bad = gen_client.post("/generate", json=body(1, {**PROMPTS[1], "designImage": "data:image/png;base64,AAAA"}))
    assert bad.status_code == 400
    check_response("/generate", "post", bad)


def test_generate_failures_match_the_document(make_gen_app, sims):
    client = make_gen_app(GPT_TIMEOUT=0.3, GPT_MAX_RETRIES=0, GENERATE_RATE_LIMIT=2).test_client()
    sims.chat.fail_next(1, status=500)
    failed = client.post("/generate", json=body(0, {"task": "t", "num": 1}))
    assert failed.status_code == 503 and failed.get_json()["code"] == 2
    check_response("/generate", "post", failed)
    sims.chat.hang_next(1)
    try:
        slow = client.post("/generate", json=body(0, {"task": "t", "num": 1}))
    finally:
        sims.chat.release()
    assert slow.status_code == 504
    check_response("/generate", "post", slow)
    limited = client.post("/generate", json=body(0, {"task": "t", "num": 1}))
    assert limited.status_code == 429
    check_response("/generate", "post", limited)


def test_record_and_image_answers_match_the_document(gen_client):
    gen_client.post("/generate", json=body(1, PROMPTS[1]))
    listing = gen_client.get("/generations", query_string={"limit": "1", "username": "alice"})
    check_response("/generations", "get", listing)
    record_id = listing.get_json()["data"]["items"][0]["_id"]
    record = gen_client.get(f"/generations/{record_id}")
    check_response("/generations/{record_id}", "get", record)
    sketch = record.get_json()["data"]["input"]["designImage"]["sha256"]
    image = gen_client.get(f"/images/{sketch}")
    assert image.status_code == 200 and image.mimetype == "image/png"
    check_response("/images/{key}", "get", image)
    cached = gen_client.get(f"/images/{sketch}", headers={"If-None-Match": image.headers["ETag"]})
    assert cached.status_code == 304
    check_response("/images/{key}", "get", cached)
    failures = [("/images/xyz", "/images/{key}", 400), ("/images/" + "a" * 64, "/images/{key}", 404),
                ("/generations/" + "f" * 24, "/generations/{record_id}", 404),
                ("/generations?before=nope", "/generations", 400)]
    for path, template_, status in failures:
        response = gen_client.get(path)
        assert response.status_code == status
        check_response(template_, "get", response)


def test_blobs_of_saved_schemes_are_served_sandboxed(client):
    page = "<script>alert(document.cookie)</script>".encode()
    uri = "data:text/html;base64," + base64.b64encode(page).decode()
    client.post("/paint/start", json={"username": "alice"})
    assert client.post("/paint/save", json=save_body("alice", rapid=[{"canvasImage": uri}])).status_code == 200
    response = client.get(f"/images/{hashlib.sha256(page).hexdigest()}")
    assert response.status_code == 200 and response.mimetype == "text/html"  # as the client declared it
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert "sandbox" in response.headers["Content-Security-Policy"]
    check_response("/images/{key}", "get", response)


def test_probe_answers_match_the_document(client, gen_client, make_app):
    for method in ("get", "post"):
        check_response("/ping", method, client.open("/ping", method=method.upper()))
    check_response("/healthz", "get", client.get("/healthz"))
    not_ready = client.get("/readyz")  # no SD instance configured
    assert not_ready.status_code == 503
    check_response("/readyz", "get", not_ready)
    ready = gen_client.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    check_response("/readyz", "get", ready)
    metrics = client.get("/metrics")
    assert metrics.status_code == 200 and not is_envelope(metrics)
    check_response("/metrics", "get", metrics)


def test_an_unreachable_database_answers_the_documented_503(make_app):
    client = make_app(MONGO_URI="mongodb://127.0.0.1:9", MONGO_TIMEOUT_MS=200).test_client()
    response = client.post("/paint/start", json={"username": "alice"})
    assert response.status_code == 503 and response.get_json()["code"] == 3
    check_response("/paint/start", "post", response)


# Text a username could be: letters, the whitespace strip() drops and the characters refused.
NAME_CHARS = st.characters(codec="utf-8") | st.sampled_from(
    [" ", "\t", "\n", "\u3000", "\u2028", "\u200b", "\u202e", "\u00ad", "\ufeff", "\u3164", "\ufe0f", "\ue000",
     "\U000e0041", "\U000f0000", "\u0301", "\x00", "\x85"])


@settings(max_examples=400, deadline=None)
@given(name=st.text(NAME_CHARS, max_size=10) | st.text(NAME_CHARS, min_size=125, max_size=131))
def test_the_username_schema_accepts_exactly_the_names_the_server_accepts(name):
    documented = component("schemas", "StartBody")["properties"]["username"]
    schema_accepts = conforms(name, documented)
    # schemathesis checks answers with jsonschema_rs, whose Rust regex engine reads the pattern too.
    assert jsonschema_rs.validator_for(documented).is_valid(name) == schema_accepts
    try:
        TypeAdapter(Username).validate_python(name)
        server_accepts = True
    except ValidationError:
        server_accepts = False
    assert schema_accepts == server_accepts, ascii(name)
