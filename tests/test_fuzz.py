"""Property-based fuzzing of every route, driven by the OpenAPI document.

For every answer: no 5xx, JSON in the envelope, a documented status whose schema the body
matches, and nothing written to any collection when the request is refused (4xx). On top:
bodies the document accepts are accepted, and bodies it refuses are refused, so the
document is exactly as strict as the server. Seeded (derandomize) and bounded for CI.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from apps.openapi.document import operations
from apps.paint.pipelines.contract import MAX_COUNT
from tests.fuzz_support import Call, body_values, fuzz_env, operation, parameter_values
from tests.fuzz_values import (
    BROKEN, CONTENT_TYPES, SWEEP_PATH, SWEEP_QUERY, expected_json, hostile_values, mutations, raw_bodies, sweep,
)
from tests.generate_fixtures import PROMPTS, body
from tests.helpers import save_body, scheme
from tests.openapi_support import DOC, check_spec, component, conforms, request_schema
from tests.schema_strategies import JSON_VALUES


def bounded(examples: int) -> settings:
    """Return reproducible settings of `examples` examples, with no time limit per example."""
    return settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                           HealthCheck.data_too_large])


POSTS = [(path, method) for path, method, op in operations(DOC) if "requestBody" in op]
GETS = [(path, method) for path, method, op in operations(DOC) if op.get("parameters")]
# Statuses a body the document accepts may get: save answers 404 for a participant never started.
ACCEPTED = {"/paint/start": {200}, "/paint/save": {200, 404}, "/generate": {200}}
# Each valid /generate runs a whole pipeline and stores images: fewer of those.
EXAMPLES = {"/paint/start": 80, "/paint/save": 80, "/generate": 25}


@pytest.fixture(scope="module")
def env(mongo_uri, tmp_path_factory):
    """The app under fuzzing, with a participant, saves and a generation (and its images) to find."""
    with fuzz_env(mongo_uri, tmp_path_factory.mktemp("fuzz")) as made:
        made.client.post("/paint/start", json={"username": "seed"})
        for name in ("a", "b"):
            made.client.post("/paint/save", json=save_body("seed", rapid=[scheme(name)]))
        assert made.client.post("/generate", json=body(1, PROMPTS[1], username="seed")).status_code == 200
        yield made


def known(env, path: str) -> dict[str, list[str]]:
    """Return real values of the path parameters of `path`, so lookups also hit."""
    sources = {"/paint/history/{entry_id}": ("entry_id", "session_history"),
               "/generations/{record_id}": ("record_id", "generations"), "/images/{key}": ("key", "fs.files")}
    if path not in sources:
        return {}
    name, collection = sources[path]
    return {name: [str(doc["_id"]) for doc in env.db[collection].find({}, {"_id": 1})]}


def start(env, username: str) -> None:
    """Create the participant outside the checked call."""
    assert env.client.post("/paint/start", json={"username": username}).status_code == 200
    env.forget()


def _too_many_stimuli(call: Call) -> bool:
    """Return whether a type 3 body asks for more stimuli in all than the server makes.

    A rule across two fields (len(selectedSchemes) x num), which the document states in its
    description rather than as JSON Schema branches; the model checks it.
    """
    body = call.body if isinstance(call.body, dict) else {}
    prompts = body.get("prompts") if body.get("type") == 3 else None
    if not isinstance(prompts, dict) or not isinstance(prompts.get("selectedSchemes"), list):
        return False
    num = prompts.get("num")
    return isinstance(num, int) and len(prompts["selectedSchemes"]) * num > MAX_COUNT


def expect(call: Call, response, accepted: bool) -> None:
    """Assert that an accepted body got an accepting status and a refused one a 4xx."""
    status = response.status_code
    if accepted and call.path == "/generate" and _too_many_stimuli(call):
        assert status == 400 and response.get_json()["message"].startswith("prompts.num: "), response.get_json()
    elif accepted:
        assert status in ACCEPTED[call.path], f"{call.path} refused a body the document accepts: {response.get_json()}"
    else:
        assert 400 <= status < 500, f"{call.path} accepted a body the document refuses: {call.body!r:.300}"


@pytest.mark.parametrize("path,method", POSTS)
def test_bodies_the_document_accepts_are_accepted(env, path, method):
    @bounded(EXAMPLES[path])
    @given(value=body_values(path, method), started=st.booleans())
    def run(value, started):
        if path == "/paint/save" and started:
            start(env, value["username"])
        call = Call(path, method, body=value)
        response = env.check(call)
        expect(call, response, accepted=True)
        if path == "/paint/save" and started:
            assert response.status_code == 200

    run()


@pytest.mark.parametrize("path,method", POSTS)
def test_damaged_bodies_are_refused_unless_still_valid(env, path, method):
    schema = request_schema(path, method)

    @bounded(80 if path != "/generate" else 50)
    @given(value=mutations(body_values(path, method)) | hostile_values() | JSON_VALUES)
    def run(value):
        call = Call(path, method, body=value)
        expect(call, env.check(call), accepted=conforms(value, schema))

    run()


@pytest.mark.parametrize("path,method", POSTS)
def test_broken_json_is_refused(env, path, method):
    schema = request_schema(path, method)

    @bounded(50)
    @given(raw=raw_bodies(body_values(path, method)), content_type=st.sampled_from(CONTENT_TYPES))
    def run(raw, content_type):
        call = Call(path, method, body=raw, content_type=content_type)
        parsed, value = expected_json(raw, content_type)
        expect(call, env.check(call), accepted=parsed and conforms(value, schema))

    run()


def examples(path: str, method: str) -> list:
    """Return the request body examples the document gives for the operation."""
    media = operation(path, method)["requestBody"]["content"]["application/json"]
    return [example["value"] for example in media["examples"].values()]


@pytest.mark.parametrize("path,method", POSTS)
def test_every_example_damaged_everywhere(env, path, method):
    """Sweep: each hostile value at every spot of every documented example, and hostile keys in every object."""
    schema = request_schema(path, method)
    for example in examples(path, method):
        for value in sweep(example):
            call = Call(path, method, body=value)
            expect(call, env.check(call), accepted=conforms(value, schema))


@pytest.mark.parametrize("path,method", POSTS)
def test_known_broken_bodies_are_refused(env, path, method):
    for raw in BROKEN:
        call = Call(path, method, body=raw)
        parsed, value = expected_json(raw, call.content_type)
        expect(call, env.check(call), accepted=parsed and conforms(value, request_schema(path, method)))


@pytest.mark.parametrize("path,method", GETS)
def test_every_parameter_given_every_hostile_value(env, path, method):
    op = operation(path, method)
    where = {p["name"]: p["in"] for p in op["parameters"]}
    valid = {p["name"]: "0" * 24 if p["in"] == "path" else "alice" for p in op["parameters"] if p.get("required")}
    for param in op["parameters"]:
        for value in SWEEP_PATH if param["in"] == "path" else SWEEP_QUERY:
            sent = {**valid, param["name"]: value}
            env.check(Call(path, method, params={k: v for k, v in sent.items() if where[k] == "path"},
                           query={k: v for k, v in sent.items() if where[k] == "query"}))


@pytest.mark.parametrize("path,method", GETS)
def test_parameters_the_document_accepts_are_accepted(env, path, method):
    real = known(env, path)

    @bounded(50)
    @given(query=parameter_values(path, method, "query"), params=parameter_values(path, method, "path"),
           data=st.data())
    def run(query, params, data):
        for name, values in real.items():
            if values and data.draw(st.booleans()):
                params[name] = data.draw(st.sampled_from(values))
        if path == "/paint/history" and data.draw(st.booleans()):
            start(env, query["username"])
        response = env.check(Call(path, method, params=params, query=query))
        if path != "/generations":  # there a `before` id must also exist, which no schema can say
            assert response.status_code != 400, response.get_json()

    run()


HOSTILE_TEXT = st.text(max_size=30) | st.sampled_from(["/", "..", "%2F", "a/b", "\x00", " ", "0" * 25, "{}",
                                                       "$ne", "1e3", "-1", "٥", "true", "x" * 5000])


@pytest.mark.parametrize("path,method", GETS)
def test_hostile_parameters_are_refused_cleanly(env, path, method):
    op = operation(path, method)
    names = [p["name"] for p in op["parameters"]]
    query_names = {p["name"] for p in op["parameters"] if p["in"] == "query"}

    @bounded(50)
    @given(values=st.dictionaries(st.sampled_from(names) | st.text(min_size=1, max_size=8), HOSTILE_TEXT, max_size=4))
    def run(values):
        params = {p["name"]: values.get(p["name"], "x") for p in op["parameters"] if p["in"] == "path"}
        query = {k: v for k, v in values.items() if k not in params}
        response = env.check(Call(path, method, params=params, query=query))
        if query_names and set(query) - query_names:
            assert response.status_code == 400, "an unknown query parameter must be refused"

    run()


@pytest.mark.parametrize("path", sorted(DOC["paths"]))
def test_undocumented_methods_answer_405_in_the_envelope(env, path):
    documented = set(DOC["paths"][path])
    for method in {"get", "post", "put", "delete", "patch"} - documented:
        response = env.client.open(path.replace("{", "x").replace("}", ""), method=method.upper())
        assert response.status_code == 405 and response.headers["Allow"]
        check_spec(response, component("responses", "MethodNotAllowed"), f"{method} {path}")


def test_authorization_headers_other_than_the_token_are_refused(make_app):
    client = make_app(API_TOKEN="fuzz-token").test_client()
    latin = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF), max_size=40)

    near = st.sampled_from(["Bearer", "Bearer  fuzz-token ", "bearer fuzz-token", "Bearer fuzz-token\t"])

    @bounded(60)
    @given(value=latin | latin.map(lambda s: f"Bearer {s}") | near)
    def run(value):
        response = client.post("/paint/start", json={"username": "alice"}, headers={"Authorization": value})
        right = value.partition(" ")[0].lower() == "bearer" and value.partition(" ")[2].strip() == "fuzz-token"
        assert response.status_code == (200 if right else 401)
        check_spec(response, component("responses", "Unauthorized") if not right else
                   DOC["paths"]["/paint/start"]["post"]["responses"]["200"], value)

    run()


# Regressions: what the fuzzing found, each pinned with the smallest request that showed it.

SURROGATE_BODIES = [
    ("/paint/start", b'{"username": "\\ud800"}'),  # was 500: BSON cannot encode it
    ("/paint/start", b'{"username": "\xed\xa0\x80"}'),  # the same surrogate, encoded as if UTF-8 could
    ("/paint/save", '{"username": "seed", "data": {"designSchemes": {"快速发散": [{"a": "\\udc00"}]}, '
                    '"designTask": "", "currentStage": "准备"}}'.encode()),
    ("/generate", b'{"appid": 0, "type": 0, "username": "\\ud800", "prompts": {"task": "t", "num": 1}}'),
]


@pytest.mark.parametrize("path,raw", SURROGATE_BODIES)
def test_lone_surrogates_are_refused_before_anything_runs(env, path, raw):
    response = env.check(Call(path, "post", body=raw))
    assert response.status_code == 400
    assert "surrogate" in response.get_json()["message"] or "UTF-8" in response.get_json()["message"]


@pytest.mark.parametrize("raw", [b'{"username": "seed", "data": {"designSchemes": {}, "designTask": "", '
                                 b'"currentStage": "\xe5\x87\x86\xe5\xa4\x87"}, "x": Infinity}',
                                 b'{"username": NaN}'])
def test_nan_and_infinity_are_not_json(env, raw):
    # Infinity in a scheme was stored (503 on nx-27017), then sent back as invalid JSON.
    path = "/paint/save" if b"data" in raw else "/paint/start"
    response = env.check(Call(path, "post", body=raw))
    assert response.status_code == 400 and "not a JSON number" in response.get_json()["message"]


@pytest.mark.parametrize("before", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_before_times_beyond_the_utc_range_are_refused(env, before):
    response = env.check(Call("/generations", "get", query={"before": before}))  # was 500: OverflowError
    assert response.status_code == 400 and response.get_json()["message"].startswith("before:")


def test_an_escaped_backslash_u_is_plain_text(env):
    response = env.check(Call("/paint/start", "post", body=b'{"username": "\\\\ud800"}'))
    assert response.status_code == 200 and response.get_json()["data"]["username"] == "\\ud800"
