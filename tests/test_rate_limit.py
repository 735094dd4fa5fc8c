"""GENERATE_RATE_LIMIT on POST /generate: per client address, checked before any work.

Clients are told apart by their address, set per request with `environ_base`. The buckets
themselves, in both implementations of the shared state, are tested in tests/test_shared.py.
"""
from __future__ import annotations

import uuid

from prometheus_client.parser import text_string_to_metric_families

from apps.records import COLLECTION
from tests.helpers import PROMPTS, body

ALICE = {"REMOTE_ADDR": "10.0.0.1"}
BOB = {"REMOTE_ADDR": "10.0.0.2"}


def generate(client, environ, sent=None):
    """POST one cheap generation (naming: two GPT calls, no image) as the client at `environ`."""
    return client.post("/generate", json=sent or body(2, PROMPTS[2]), environ_base=environ)


def test_third_generation_in_a_minute_is_429_and_leaves_no_record(make_gen_app, sims):
    app = make_gen_app(GENERATE_RATE_LIMIT=2)
    client = app.test_client()
    assert [generate(client, ALICE).status_code for _ in range(2)] == [200, 200]
    calls = sims.chat.calls

    response = generate(client, ALICE)
    answer = response.get_json()
    assert response.status_code == 429 and answer["success"] is False and answer["code"] == 1
    assert answer["data"] is None and answer["message"].startswith("too many generation requests")
    assert 1 <= int(response.headers["Retry-After"]) <= 30  # 2 per minute: one token every 30 s
    assert sims.chat.calls == calls  # no GPT call for the rejected request

    assert generate(client, BOB).status_code == 200  # another client has its own budget
    db = app.extensions["mongo"].database()
    assert db[COLLECTION].count_documents({}) == 3
    text = client.get("/metrics").get_data(as_text=True)
    rejected = [sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == "refinity_http_requests_total" and sample.labels["status"] == "429"]
    assert rejected == [1]


def test_the_limit_is_checked_before_the_body(make_gen_app):
    client = make_gen_app(GENERATE_RATE_LIMIT=1).test_client()
    assert generate(client, ALICE, sent={"appid": 0}).status_code == 400  # spends the budget
    assert generate(client, ALICE).status_code == 429


def test_no_limit_by_default(gen_client, gen_db):
    statuses = [generate(gen_client, ALICE).status_code for _ in range(3)]
    assert statuses == [200, 200, 200] and gen_db[COLLECTION].count_documents({}) == 3


def test_behind_a_trusted_proxy_the_forwarded_address_is_the_client(make_gen_app):
    app = make_gen_app(GENERATE_RATE_LIMIT=1, TRUSTED_PROXIES=1)
    client = app.test_client()
    proxy = {"REMOTE_ADDR": "10.9.9.9"}

    def as_participant(address):
        return client.post("/generate", json=body(2, PROMPTS[2]), environ_base=proxy,
                           headers={"X-Forwarded-For": address}).status_code

    assert as_participant("192.0.2.1") == 200
    assert as_participant("192.0.2.1") == 429
    assert as_participant("192.0.2.2") == 200  # another participant behind the same proxy


def test_two_processes_on_one_redis_give_a_client_one_budget(make_app, redis_url):
    # Two apps on one Redis and prefix: two server processes of one deployment.
    settings = {"REDIS_URL": redis_url, "REDIS_PREFIX": f"test-{uuid.uuid4().hex[:12]}:", "GENERATE_RATE_LIMIT": 2}
    first, second = (make_app(**settings).test_client() for _ in range(2))
    spend = {"appid": 0}  # refused at its body (400), after the budget is spent
    assert [generate(first, ALICE, spend).status_code, generate(second, ALICE, spend).status_code] == [400, 400]
    assert generate(first, ALICE).status_code == generate(second, ALICE).status_code == 429
    assert generate(second, BOB, spend).status_code == 400
