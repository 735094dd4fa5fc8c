"""The chat-completions simulator over real HTTP: routes, auth, answer conventions, faults."""
from __future__ import annotations

import json
import re
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from simulators.chat import ChatSimulator, Scripted
from tests.helpers import API_VERSION, SIM_KEY, SKETCH, wait_until

NUMBERING = re.compile(r"^\s*(?:\d+[.、)]|[①-⑩]|[-•*])\s*")


def post(url: str, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict, Any]:
    """POST `body` (JSON, or raw bytes) and return (status, lower-cased headers, JSON body)."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, json.load(response)
    except urllib.error.HTTPError as e:
        with e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, json.load(e)


def azure(sim: ChatSimulator, body: dict, *, key: str | None = SIM_KEY, version: str | None = API_VERSION,
          deployment: str = "gpt-4o"):
    """POST `body` on the Azure route."""
    query = f"?api-version={version}" if version else ""
    headers = {"api-key": key} if key else {}
    return post(f"{sim.url}/openai/deployments/{deployment}/chat/completions{query}", body, headers)


def openai_post(sim: ChatSimulator, body: dict, *, key: str | None = SIM_KEY):
    """POST `body` on the OpenAI route."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return post(f"{sim.url}/v1/chat/completions", body, headers)


def ask(prompt: str, model: str = "gpt-4o") -> dict:
    """Return a request body with one user message."""
    return {"model": model, "messages": [{"role": "user", "content": prompt}]}


def answer(sim: ChatSimulator, prompt: str) -> str:
    """Return the simulator's answer to `prompt` on the Azure route."""
    status, _, body = azure(sim, ask(prompt))
    assert status == 200, body
    return body["choices"][0]["message"]["content"]


def test_azure_route_answers_a_complete_chat_completion(chat_sim):
    status, _, body = azure(chat_sim, ask("列出产品，共 3 项"), deployment="my-gpt")
    assert status == 200
    assert body["object"] == "chat.completion" and body["model"] == "my-gpt" and body["id"]
    choice = body["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "stop"
    assert choice["message"]["role"] == "assistant"
    assert len(choice["message"]["content"].split("#")) == 3
    assert body["usage"]["total_tokens"] == body["usage"]["prompt_tokens"] + body["usage"]["completion_tokens"]
    record = chat_sim.requests[-1]
    assert (record.route, record.deployment, record.api_version, record.status) == ("azure", "my-gpt", API_VERSION, 200)


def test_openai_route_takes_the_model_from_the_body(chat_sim):
    status, _, body = openai_post(chat_sim, ask("你好", model="gpt-4o-mini"))
    assert status == 200 and body["model"] == "gpt-4o-mini"
    assert chat_sim.requests[-1].route == "openai"


@pytest.mark.parametrize("route, headers", [
    ("azure", {}),
    ("azure", {"api-key": "wrong"}),
    ("azure", {"Authorization": f"Bearer {SIM_KEY}"}),
    ("openai", {}),
    ("openai", {"Authorization": "Bearer wrong"}),
    ("openai", {"api-key": SIM_KEY}),
])
def test_wrong_or_missing_key_is_401_with_an_error_body(chat_sim, route, headers):
    path = (f"/openai/deployments/gpt-4o/chat/completions?api-version={API_VERSION}"
            if route == "azure" else "/v1/chat/completions")
    status, _, body = post(chat_sim.url + path, ask("你好"), headers)
    assert status == 401
    assert set(body["error"]) == {"message", "type", "code"}
    assert chat_sim.calls == 1


def test_azure_route_requires_an_api_version(chat_sim):
    status, _, body = azure(chat_sim, ask("你好"), version=None)
    assert status == 400 and "api-version" in body["error"]["message"]


@pytest.mark.parametrize("body", [
    b"{not json",
    b"[]",
    {"model": "m"},
    {"model": "m", "messages": []},
    {"model": "m", "messages": [{"content": "no role"}]},
    {"model": "m", "messages": [{"role": "user", "content": 3}]},
    {"model": "m", "messages": [{"role": "user", "content": [{"type": "audio"}]}]},
])
def test_malformed_body_is_400(chat_sim, body):
    status, _, answer_body = azure(chat_sim, body)
    assert status == 400 and answer_body["error"]["type"] == "invalid_request_error"


def test_openai_route_requires_a_model(chat_sim):
    status, _, _ = openai_post(chat_sim, {"messages": [{"role": "user", "content": "x"}]})
    assert status == 400


def test_unknown_path_is_404(chat_sim):
    status, _, body = post(f"{chat_sim.url}/v1/embeddings", ask("x"), {"Authorization": f"Bearer {SIM_KEY}"})
    assert status == 404 and "error" in body


@pytest.mark.parametrize("prompt, count", [
    ("给出一些产品", 1),
    ("给出产品，共 4 项", 4),
    ("共2项的例子之后，真正要的是共 7 项", 7),
    ("共　3　项", 3),
])
def test_count_convention(chat_sim, prompt, count):
    text = answer(chat_sim, prompt)
    items = text.split("#")
    assert len(items) == count and len(set(items)) == count
    assert all(item.strip() and not NUMBERING.match(item) for item in items)


def test_count_comes_from_the_last_user_message(chat_sim):
    messages = [{"role": "system", "content": "共 9 项"}, {"role": "user", "content": "共 4 项"},
                {"role": "assistant", "content": "a#b#c#d"}, {"role": "user", "content": "再来，共 2 项"}]
    _, _, body = azure(chat_sim, {"messages": messages})
    assert len(body["choices"][0]["message"]["content"].split("#")) == 2
    assert chat_sim.requests[-1].prompt == "再来，共 2 项"


def test_answers_are_deterministic(chat_sim):
    assert answer(chat_sim, "共 5 项 产品") == answer(chat_sim, "共 5 项 产品")


@pytest.mark.parametrize("line", ["候选：甲#乙#丙#丁", "候选:甲＃乙＃丙＃丁", "候选： 甲 # 乙#丙#丁#甲#"])
def test_candidates_convention(chat_sim, line):
    items = answer(chat_sim, f"选出最好的方案，共 3 项\n{line}").split("#")
    assert len(items) == 3 and len(set(items)) == 3
    assert set(items) <= {"甲", "乙", "丙", "丁"}


def test_never_more_items_than_candidates(chat_sim):
    items = answer(chat_sim, "共 5 项\n候选：甲#乙").split("#")
    assert sorted(items) == ["乙", "甲"]


@pytest.mark.parametrize("prompt", ["用英文关键词描述场景，共 3 项", "Write English keywords, 共 3 项"])
def test_english_keywords(chat_sim, prompt):
    items = answer(chat_sim, prompt).split("#")
    assert len(set(items)) == 3
    for item in items:
        assert item.isascii() and len(item.split(", ")) >= 2


def test_image_parts_are_decoded_and_counted(chat_sim):
    parts = [{"type": "text", "text": "这是什么产品"},
             {"type": "image_url", "image_url": {"url": SKETCH}},
             {"type": "image_url", "image_url": {"url": SKETCH}}]
    status, _, _ = azure(chat_sim, {"messages": [{"role": "user", "content": parts}]})
    assert status == 200
    record = chat_sim.requests[-1]
    assert record.images == 2 and record.prompt == "这是什么产品"


@pytest.mark.parametrize("url", ["data:image/png;base64,not*base64!", "https://example.com/a.png",
                                 "data:image/png;base64,"])
def test_bad_image_part_is_400(chat_sim, url):
    parts = [{"type": "text", "text": "x"}, {"type": "image_url", "image_url": {"url": url}}]
    status, _, _ = azure(chat_sim, {"messages": [{"role": "user", "content": parts}]})
    assert status == 400


@pytest.mark.parametrize("status", [429, 500, 503])
def test_fail_next_sends_status_body_and_retry_headers(chat_sim, status):
    chat_sim.fail_next(1, status=status, retry_after=1.5)
    got, headers, body = azure(chat_sim, ask("x"))
    assert got == status
    assert headers["retry-after"] == "2" and headers["retry-after-ms"] == "1500"
    assert set(body["error"]) == {"message", "type", "code"}
    assert azure(chat_sim, ask("x"))[0] == 200
    assert [r.status for r in chat_sim.requests] == [status, 200]


def test_short_next_answers_one_item_fewer(chat_sim):
    chat_sim.short_next(1)
    assert len(answer(chat_sim, "共 3 项").split("#")) == 2
    assert len(answer(chat_sim, "共 3 项").split("#")) == 3


def test_messy_answer_holds_the_same_items_decorated(chat_sim):
    clean = answer(chat_sim, "共 6 项").split("#")
    chat_sim.messy = True
    messy = answer(chat_sim, "共 6 项")
    assert "＃" in messy and messy.endswith("#") and messy.startswith("1. ")
    items = [NUMBERING.sub("", part).strip().strip("“”\"") for part in re.split("[#＃]", messy)]
    assert [item for item in items if item] == clean


def test_script_replays_a_whole_message_until_cleared(chat_sim):
    cut = "好的，以下是3个产品创意：\nA#B#可收"
    chat_sim.script = Scripted(cut, finish_reason="length")
    for _ in range(2):  # every later call, not just the next one
        status, _, body = openai_post(chat_sim, ask("共 3 项"))
        assert status == 200
        choice = body["choices"][0]
        assert choice["finish_reason"] == "length"
        assert choice["message"] == {"role": "assistant", "content": cut, "refusal": None}
    chat_sim.script = Scripted(None, refusal="I'm sorry, I can't help with that.")
    message = azure(chat_sim, ask("共 3 项"))[2]["choices"][0]["message"]
    assert message["content"] is None and message["refusal"] == "I'm sorry, I can't help with that."
    chat_sim.script = None
    assert len(answer(chat_sim, "共 3 项").split("#")) == 3


def test_hang_holds_a_call_until_released(chat_sim):
    chat_sim.hang_next(1)
    results = []
    caller = threading.Thread(target=lambda: results.append(azure(chat_sim, ask("x"))[0]))
    caller.start()
    wait_until(lambda: chat_sim.held == 1)
    assert results == [] and chat_sim.in_flight == 1
    chat_sim.release()
    caller.join(timeout=10)
    assert results == [200] and chat_sim.held == 0


def test_fail_held_fails_the_held_call_its_text_names_and_release_goes_oldest_first(chat_sim):
    chat_sim.hang_next(3)
    statuses: dict[str, int] = {}
    callers = []
    for prompt in ("first", "second", "third"):
        callers.append(threading.Thread(target=lambda p=prompt: statuses.update({p: azure(chat_sim, ask(p))[0]})))
        callers[-1].start()
        wait_until(lambda n=len(callers): chat_sim.held == n)  # held in this order
    with pytest.raises(LookupError):
        chat_sim.fail_held("fourth")
    chat_sim.fail_held("second", status=503)
    callers[1].join(timeout=10)
    assert statuses == {"second": 503} and chat_sim.held == 2
    chat_sim.release(1)
    callers[0].join(timeout=10)
    assert statuses == {"second": 503, "first": 200} and chat_sim.held == 1
    chat_sim.release()
    callers[2].join(timeout=10)
    assert statuses == {"second": 503, "first": 200, "third": 200} and chat_sim.held == 0
    assert [r.status for r in chat_sim.requests] == [503, 200, 200]


def test_stop_lets_held_calls_go():
    sim = ChatSimulator(api_key=SIM_KEY).start()
    sim.hang_next(1)
    caller = threading.Thread(target=_swallow, args=(sim,))
    caller.start()
    wait_until(lambda: sim.held == 1)
    stopper = threading.Thread(target=sim.stop)
    stopper.start()
    stopper.join(timeout=10)
    caller.join(timeout=10)
    assert not stopper.is_alive() and not caller.is_alive()


def _swallow(sim: ChatSimulator) -> None:
    """Call the simulator, ignoring the connection error a stop may cause."""
    try:
        azure(sim, ask("x"))
    except OSError:
        pass
