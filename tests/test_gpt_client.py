"""The GPT client through the real `openai` SDK against the chat simulator over loopback."""
from __future__ import annotations

import json
import logging
import socket
import threading

import openai
import pydantic
import pytest

from agent.errors import (
    BackendError, BackendTimeout, GPTAuthError, GPTBadRequest, GPTConnectionError, GPTContentFiltered,
    GPTEmptyAnswer, GPTNotConfigured, GPTRateLimited, GPTRefused, GPTSchemaRefused, GPTServerError, GPTTimeout,
)
from agent.gpt import STRUCTURED, TEXT, ChatAnswer, GPTClient
from config import from_env
from simulators.chat import Scripted
from tests.helpers import API_VERSION, PNG_1PX, SKETCH, Worker, wait_until


def test_azure_chat_goes_through_the_sdk(chat_sim, make_gpt):
    gpt = make_gpt("azure", AZURE_OPENAI_DEPLOYMENT="gpt-4o")
    answer = gpt.chat("列出运动辅助产品，共 3 项")
    assert isinstance(answer, ChatAnswer)
    assert len(answer.text.split("#")) == 3
    assert (answer.deployment, answer.retries) == ("gpt-4o", 0)
    assert answer.latency >= 0 and answer.usage["total_tokens"] > 0
    record = chat_sim.requests[-1]
    assert (record.route, record.deployment, record.api_version) == ("azure", "gpt-4o", API_VERSION)
    assert (gpt.provider, gpt.configured) == ("azure", True)


def test_plain_openai_chat_goes_through_the_sdk(chat_sim, make_gpt):
    gpt = make_gpt("openai", OPENAI_MODEL="gpt-4o-mini")
    answer = gpt.chat([{"role": "system", "content": "你是设计助手"},
                       {"role": "user", "content": "给出产品，共 2 项"}], temperature=0.2, max_tokens=50)
    assert answer.deployment == "gpt-4o-mini" and len(answer.text.split("#")) == 2
    record = chat_sim.requests[-1]
    assert (record.route, record.deployment) == ("openai", "gpt-4o-mini")
    assert "你是设计助手" in record.text
    assert (gpt.provider, gpt.chat_deployment, gpt.vision_deployment) == ("openai", "gpt-4o-mini", "gpt-4o-mini")


def test_vision_sends_every_image_to_the_vision_deployment(chat_sim, make_gpt):
    gpt = make_gpt(AZURE_OPENAI_DEPLOYMENT="gpt-chat", AZURE_OPENAI_VISION_DEPLOYMENT="gpt-vision")
    answer = gpt.vision("这些草图画的是什么产品？共 2 项", [SKETCH, PNG_1PX])  # raw base64 gets a prefix
    assert answer.deployment == "gpt-vision" and len(answer.text.split("#")) == 2
    record = chat_sim.requests[-1]
    assert (record.deployment, record.images) == ("gpt-vision", 2)
    assert record.prompt == "这些草图画的是什么产品？共 2 项"


def test_rate_limit_is_retried_by_the_sdk(chat_sim, make_gpt):
    gpt = make_gpt(GPT_MAX_RETRIES=2)
    chat_sim.fail_next(2, status=429, retry_after=0.01)
    answer = gpt.chat("共 1 项")
    assert answer.retries == 2 and answer.text
    assert [r.status for r in chat_sim.requests] == [429, 429, 200]
    assert gpt.snapshot()["deployments"]["gpt-4o"]["retries"] == 2


def test_rate_limit_beyond_the_retries_names_the_deployment(chat_sim, make_gpt):
    gpt = make_gpt(GPT_MAX_RETRIES=2)
    chat_sim.fail_next(3, status=429, retry_after=0.01)
    with pytest.raises(GPTRateLimited) as caught:
        gpt.chat("共 1 项")
    error = caught.value
    assert str(error) == "GPT deployment 'gpt-4o': rate limited (HTTP 429) after 2 retries"
    assert error.deployment == "gpt-4o" and error.retries == 2
    assert isinstance(error, BackendError) and error.backend == "gpt" and error.http_status == 503
    assert isinstance(error.__cause__, openai.RateLimitError)
    assert chat_sim.calls == 3
    assert gpt.snapshot()["deployments"]["gpt-4o"]["failures"] == {"rate_limited": 1}


@pytest.mark.parametrize("status", [500, 503])
def test_server_error(chat_sim, make_gpt, status):
    gpt = make_gpt()
    chat_sim.fail_next(1, status=status)
    with pytest.raises(GPTServerError) as caught:
        gpt.chat("x")
    assert caught.value.status == status and f"HTTP {status}" in caught.value.cause


@pytest.mark.parametrize("provider, key_setting", [("azure", "AZURE_OPENAI_API_KEY"),
                                                   ("openai", "OPENAI_API_KEY")])
def test_wrong_key_is_an_auth_error_that_never_shows_the_key(make_gpt, caplog, provider, key_setting):
    caplog.set_level(logging.DEBUG)
    wrong_key = "sk-wrong-7d1e0b9c"
    gpt = make_gpt(provider, **{key_setting: wrong_key})
    with pytest.raises(GPTAuthError) as caught:
        gpt.chat("x")
    error = caught.value
    assert "HTTP 401" in error.cause and error.cause in str(error)
    assert isinstance(error.__cause__, openai.AuthenticationError)
    for text in [str(error)] + [record.getMessage() for record in caplog.records]:
        assert wrong_key not in text and wrong_key[-4:] not in text


def test_timeout(chat_sim, make_gpt):
    gpt = make_gpt(GPT_TIMEOUT=0.3, GPT_MAX_RETRIES=0)
    chat_sim.hang_next(1)
    with pytest.raises(GPTTimeout) as caught:
        gpt.chat("x")
    chat_sim.release()
    assert isinstance(caught.value, BackendTimeout) and caught.value.http_status == 504
    assert isinstance(caught.value.__cause__, openai.APITimeoutError)
    assert "'gpt-4o'" in str(caught.value) and "timed out" in str(caught.value)


def test_unreachable_endpoint_is_a_connection_error(make_gpt):
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    gpt = make_gpt(AZURE_OPENAI_ENDPOINT=f"http://127.0.0.1:{port}")
    with pytest.raises(GPTConnectionError):
        gpt.chat("x")


def test_bad_request(make_gpt):
    with pytest.raises(GPTBadRequest) as caught:
        make_gpt().vision("x", ["data:image/png;base64,***"])
    assert caught.value.status == 400


@pytest.mark.parametrize("env, reason", [
    ({}, "OPENAI_API_KEY"),
    ({"AZURE_OPENAI_ENDPOINT": "http://127.0.0.1:9"}, "AZURE_OPENAI_API_KEY"),
])
def test_not_configured(env, reason):
    gpt = GPTClient.from_config(from_env(env))
    assert (gpt.configured, gpt.provider) == (False, "none")
    with pytest.raises(GPTNotConfigured) as caught:
        gpt.chat("x")
    assert reason in str(caught.value)
    with pytest.raises(GPTNotConfigured):
        gpt.vision("x", [SKETCH])
    assert gpt.snapshot()["deployments"]["gpt-4o"]["failures"] == {"not_configured": 2}
    gpt.close()


def test_empty_answer(chat_sim, make_gpt):
    gpt = make_gpt()
    chat_sim.short_next(1)  # one item asked, none given: empty content
    with pytest.raises(GPTEmptyAnswer) as caught:
        gpt.chat("给一个名字")
    assert "empty answer" in str(caught.value) and caught.value.deployment == "gpt-4o"
    assert gpt.snapshot()["deployments"]["gpt-4o"]["failures"] == {"empty_answer": 1}


def test_calls_beyond_the_limit_wait_for_a_slot(chat_sim, make_gpt, shared):
    gpt = make_gpt(GPT_MAX_CONCURRENCY=2, shared=shared)
    chat_sim.hang_next(6)
    answers: list[ChatAnswer] = []
    callers = [threading.Thread(target=lambda: answers.append(gpt.chat("共 1 项"))) for _ in range(6)]
    for caller in callers:
        caller.start()
    stats = lambda: gpt.snapshot()["deployments"]["gpt-4o"]  # noqa: E731
    wait_until(lambda: chat_sim.held == 2 and stats()["waiting"] == 4)
    assert chat_sim.in_flight == 2 and stats()["in_flight"] == 2
    for left in (4, 2, 0):  # let two through at a time; the next two take their slots
        chat_sim.release(2)
        wait_until(lambda: chat_sim.held == min(left, 2) and stats()["waiting"] == max(left - 2, 0))
    for caller in callers:
        caller.join(timeout=10)
    assert len(answers) == 6 and chat_sim.calls == 6
    assert chat_sim.peak_in_flight == 2
    assert stats() == {"calls": 6, "retries": 0, "in_flight": 0, "waiting": 0, "failures": {}}


def test_each_deployment_has_its_own_limit(chat_sim, make_gpt, shared):
    gpt = make_gpt(GPT_MAX_CONCURRENCY=1, AZURE_OPENAI_VISION_DEPLOYMENT="gpt-vision", shared=shared)
    chat_sim.hang_next(3)
    callers = [threading.Thread(target=gpt.chat, args=("x",)) for _ in range(2)]
    callers.append(threading.Thread(target=gpt.vision, args=("x", [SKETCH])))
    for caller in callers:
        caller.start()
    wait_until(lambda: chat_sim.held == 2 and gpt.snapshot()["deployments"]["gpt-4o"]["waiting"] == 1)
    chat_sim.release()
    for caller in callers:
        caller.join(timeout=10)
    assert sorted(r.deployment for r in chat_sim.requests) == ["gpt-4o", "gpt-4o", "gpt-vision"]


def test_two_processes_on_one_redis_share_the_limit(chat_sim, make_gpt, make_shared):
    # Two clients on two shared states of one deployment: what two server processes have.
    gpts = [make_gpt(GPT_MAX_CONCURRENCY=2, shared=make_shared("redis")) for _ in range(2)]
    chat_sim.hang_next(6)
    callers = [Worker(lambda gpt=gpts[n % 2]: gpt.chat("共 1 项")) for n in range(6)]
    for caller in callers:
        caller.start()
    waiting = lambda: sum(gpt.snapshot()["deployments"]["gpt-4o"]["waiting"] for gpt in gpts)  # noqa: E731
    wait_until(lambda: chat_sim.held == 2 and waiting() == 4)
    for left in (4, 2, 0):  # two go at a time, and two waiting, in either process, take their slots
        chat_sim.release(2)
        wait_until(lambda: chat_sim.held == min(left, 2) and waiting() == max(left - 2, 0))
    assert all(isinstance(caller.outcome(10), ChatAnswer) for caller in callers)
    assert chat_sim.calls == 6 and chat_sim.peak_in_flight == 2


# -- structured outputs, finish reasons and declines -------------------------------------------
class Names(pydantic.BaseModel):
    """A strict answer model, as a pipeline step builds one."""

    model_config = pydantic.ConfigDict(extra="forbid")
    item_1: str
    item_2: str


def test_a_schema_is_sent_as_structured_outputs_and_parsed(chat_sim, make_gpt):
    answer = make_gpt().chat("给出两个产品名称，不超过 12 个字，共 2 项", schema=Names)
    assert answer.protocol == STRUCTURED and isinstance(answer.parsed, Names)
    assert json.loads(answer.text) == answer.parsed.model_dump() and answer.parsed.item_1 != answer.parsed.item_2
    assert (answer.finish_reason, answer.refusal, answer.max_tokens) == ("stop", None, 2000)
    assert answer.usage["completion_tokens"] > 0
    assert chat_sim.requests[-1].schema == "Names"


@pytest.mark.parametrize("setting, refuse", [
    ({}, "model"),  # a model before gpt-4o 2024-08-06
    ({"AZURE_OPENAI_API_VERSION": "2024-06-01"}, "version"),  # an api-version before 2024-08-01-preview
])
def test_auto_falls_back_to_text_once_per_deployment_and_says_so(chat_sim, make_gpt, caplog, setting, refuse):
    if refuse == "model":
        chat_sim.no_schema = {"gpt-4o"}
    gpt = make_gpt(AZURE_OPENAI_VISION_DEPLOYMENT="gpt-vision", **setting)
    with caplog.at_level(logging.WARNING, logger="agent.gpt"):
        first, second = (gpt.chat("共 2 项", schema=Names) for _ in range(2))
    assert (first.protocol, first.parsed, len(first.text.split("#"))) == (TEXT, None, 2)
    assert second.protocol == TEXT
    assert [(r.status, r.schema) for r in chat_sim.requests] == [(400, "Names"), (200, None), (200, None)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "'gpt-4o'" in warnings[0] and "text protocol" in warnings[0]
    protocols = gpt.snapshot()["protocols"]
    assert protocols["gpt-4o"]["protocol"] == TEXT and "HTTP 400" in protocols["gpt-4o"]["fallback"]
    assert protocols["gpt-vision"] == {"protocol": STRUCTURED, "fallback": None}  # each deployment on its own
    assert gpt.snapshot()["deployments"]["gpt-4o"]["failures"] == {}  # a fallback is no failure


def test_on_never_falls_back(chat_sim, make_gpt):
    chat_sim.no_schema = {"gpt-4o"}
    gpt = make_gpt(GPT_STRUCTURED="on")
    with pytest.raises(GPTSchemaRefused) as caught:
        gpt.chat("共 2 项", schema=Names)
    assert caught.value.status == 400 and caught.value.http_status == 503 and "not supported" in str(caught.value)
    assert chat_sim.calls == 1 and gpt.protocol("gpt-4o") == STRUCTURED
    assert gpt.snapshot()["deployments"]["gpt-4o"]["failures"] == {"schema_refused": 1}


def test_an_answer_that_ignores_the_schema_comes_back_as_text(chat_sim, make_gpt):
    chat_sim.script = Scripted("折叠计数凳#夜行护膝")  # a service that does not honour response_format
    answer = make_gpt().chat("共 2 项", schema=Names)
    assert (answer.protocol, answer.parsed, answer.text) == (TEXT, None, "折叠计数凳#夜行护膝")
    assert chat_sim.requests[-1].schema == "Names"


def test_off_sends_no_schema(chat_sim, make_gpt):
    answer = make_gpt(GPT_STRUCTURED="off").chat("共 2 项", schema=Names)
    assert (answer.protocol, answer.parsed) == (TEXT, None) and chat_sim.requests[-1].schema is None


class Loose(pydantic.BaseModel):
    """A model whose schema strict mode rejects (a free-form object)."""

    notes: dict[str, str]


def test_an_invalid_schema_is_our_error_not_a_fallback(chat_sim, make_gpt):
    gpt = make_gpt()
    with pytest.raises(GPTBadRequest) as caught:
        gpt.chat("共 1 项", schema=Loose)
    assert not isinstance(caught.value, GPTSchemaRefused) and "Invalid schema" in str(caught.value)
    assert gpt.protocol("gpt-4o") == STRUCTURED


def test_a_cut_answer_is_returned_with_finish_reason_length_and_never_parsed(chat_sim, make_gpt):
    answer = make_gpt().chat("共 2 项", schema=Names, max_tokens=5)
    assert (answer.finish_reason, answer.parsed, answer.max_tokens) == ("length", None, 5)
    assert len(answer.text) == 10 and answer.protocol == STRUCTURED


def test_azure_content_filter_400_is_a_decline_the_participant_can_act_on(chat_sim, make_gpt):
    gpt = make_gpt()
    chat_sim.filter_next(1)
    with pytest.raises(GPTContentFiltered) as caught:
        gpt.chat("共 1 项", schema=Names)
    error = caught.value
    assert (error.http_status, error.caused_by_input, error.kind) == (422, True, "content_filter")
    assert "(violence)" in str(error) and "请换一种说法" in str(error) and chat_sim.calls == 1
    assert gpt.snapshot()["deployments"]["gpt-4o"]["failures"] == {"content_filter": 1}


@pytest.mark.parametrize("message, error_class", [
    (Scripted('{"item_1": "折叠', finish_reason="content_filter"), GPTContentFiltered),
    (Scripted(None, refusal="I'm sorry, I can't help with that request."), GPTRefused),
])
def test_filtered_or_refused_answers_are_declines_carrying_the_answer(chat_sim, make_gpt, message, error_class):
    chat_sim.script = message
    with pytest.raises(error_class) as caught:
        make_gpt().chat("共 2 项", schema=Names)
    error = caught.value
    assert error.http_status == 422 and error.caused_by_input
    assert error.answer.finish_reason == message.finish_reason and error.answer.parsed is None
    if message.refusal:
        assert message.refusal in str(error) and error.answer.refusal == message.refusal
