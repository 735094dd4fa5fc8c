"""Reading chat-completions requests and shaping answers, for the chat simulator (a test double)."""
from __future__ import annotations

import base64
import binascii
import re
import time
import uuid
from dataclasses import dataclass
from typing import Any

DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,(.*)$", re.DOTALL)


@dataclass(frozen=True)
class ChatRecord:
    """One request to a chat route, with the status the simulator answered."""

    route: str  # "azure" or "openai"
    deployment: str  # the Azure deployment, or the OpenAI model ("" when unknown)
    api_version: str | None
    text: str  # every text part of every message, joined by newlines
    prompt: str  # the text of the last user message
    images: int
    status: int


class BadRequest(ValueError):
    """The request body is not a valid chat-completions request."""


def _text_and_images(content: Any) -> tuple[list[str], int]:
    """Return the text parts and the number of image parts of one message's content."""
    if isinstance(content, str):
        return [content], 0
    if not isinstance(content, list):
        raise BadRequest("message content must be a string or a list of parts")
    texts, images = [], 0
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            _check_image((part.get("image_url") or {}).get("url"))
            images += 1
        else:
            raise BadRequest(f"unsupported content part: {kind!r}")
    return texts, images


def _check_image(url: Any) -> None:
    """Reject an image part that is not a base64 data URI."""
    match = DATA_URI.match(url) if isinstance(url, str) else None
    try:
        if match is None or not base64.b64decode(match[1], validate=True):
            raise BadRequest("image_url.url must be a non-empty base64 data URI")
    except binascii.Error:
        raise BadRequest("image_url.url is not valid base64") from None


def summarize(messages: Any) -> tuple[str, str, int]:
    """Return (all text, last user message text, image count) of `messages`."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages must be a non-empty list")
    all_texts, prompt, images = [], "", 0
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise BadRequest("each message needs a role")
        texts, count = _text_and_images(message.get("content"))
        all_texts += texts
        images += count
        if message["role"] == "user":
            prompt = "\n".join(texts)
    return "\n".join(all_texts), prompt, images


def completion(model: str, content: str, prompt_text: str) -> dict[str, Any]:
    """Return a complete ChatCompletion body answering `content`."""
    prompt_tokens, completion_tokens = len(prompt_text) // 2 + 1, len(content) // 2 + 1
    return {
        "id": f"chatcmpl-sim-{uuid.uuid4().hex[:16]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                     "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }
