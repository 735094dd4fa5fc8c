"""Configuration read from environment variables, with safe defaults.

Every setting is a key of the Flask config with the same name as its environment
variable. `.env` in the working directory is loaded for local runs (it never
overrides a variable that is already set). Nothing secret has a default.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from dotenv import load_dotenv

# App ids of POST /generate: each maps to a handler registered in apps/generate.py (APPS).
APP_PAINT = 0

MB = 1024 * 1024


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None


def _list(env: Mapping[str, str], name: str) -> list[str]:
    return [item.strip() for item in (env.get(name) or "").split(",") if item.strip()]


def from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the server's settings from `env` (default: the process environment and `.env`)."""
    if env is None:
        load_dotenv(override=False)
        env = os.environ
    chat_deployment = env.get("AZURE_OPENAI_DEPLOYMENT") or "gpt-4o"
    return {
        # HTTP server
        "HOST": env.get("HOST") or "0.0.0.0",
        "PORT": _int(env, "PORT", 5000),
        "MAX_CONTENT_LENGTH": _int(env, "MAX_CONTENT_LENGTH", 32 * MB),
        # /paint/save carries a participant's whole session, every sketch included.
        "SAVE_MAX_CONTENT_LENGTH": _int(env, "SAVE_MAX_CONTENT_LENGTH", 512 * MB),
        # Memory every request body together may hold at once; a body costs twice its size
        # while it is read (core/request_body.py), so the default holds one largest save.
        "BODY_MEMORY_BUDGET": _int(env, "BODY_MEMORY_BUDGET", 1536 * MB),
        # gunicorn's worker (core/worker.py): seconds for a request's head to arrive, and for its
        # body, plus one second per REQUEST_MIN_RATE bytes of the body that arrive.
        "REQUEST_READ_TIMEOUT": _float(env, "REQUEST_READ_TIMEOUT", 10.0),
        "REQUEST_MIN_RATE": _int(env, "REQUEST_MIN_RATE", 32 * 1024),
        "CORS_ORIGINS": _list(env, "CORS_ORIGINS") or ["*"],
        "API_TOKEN": env.get("API_TOKEN") or None,
        # Reverse proxies in front of the server whose X-Forwarded-For may be believed.
        "TRUSTED_PROXIES": _int(env, "TRUSTED_PROXIES", 0),
        "LOG_LEVEL": env.get("LOG_LEVEL") or "INFO",
        # Storage: MONGO_URI unset means the embedded wire-compatible store under DATA_DIR.
        "MONGO_URI": env.get("MONGO_URI") or None,
        "MONGO_DB": env.get("MONGO_DB") or "Refinity",
        "MONGO_TIMEOUT_MS": _int(env, "MONGO_TIMEOUT_MS", 3000),
        "DATA_DIR": env.get("DATA_DIR") or "./var",
        # GPT: Azure OpenAI when AZURE_OPENAI_ENDPOINT is set, else plain OpenAI when OPENAI_API_KEY is.
        "AZURE_OPENAI_ENDPOINT": env.get("AZURE_OPENAI_ENDPOINT") or None,
        "AZURE_OPENAI_API_KEY": env.get("AZURE_OPENAI_API_KEY") or None,
        "AZURE_OPENAI_API_VERSION": env.get("AZURE_OPENAI_API_VERSION") or "2024-10-21",
        "AZURE_OPENAI_DEPLOYMENT": chat_deployment,
        "AZURE_OPENAI_VISION_DEPLOYMENT": env.get("AZURE_OPENAI_VISION_DEPLOYMENT") or chat_deployment,
        "OPENAI_API_KEY": env.get("OPENAI_API_KEY") or None,
        "OPENAI_BASE_URL": env.get("OPENAI_BASE_URL") or None,
        "OPENAI_MODEL": env.get("OPENAI_MODEL") or "gpt-4o",
        "GPT_TIMEOUT": _float(env, "GPT_TIMEOUT", 60.0),
        "GPT_MAX_RETRIES": _int(env, "GPT_MAX_RETRIES", 2),
        "GPT_MAX_CONCURRENCY": _int(env, "GPT_MAX_CONCURRENCY", 10),
        # Stable Diffusion WebUI instances, shared by every request of the server.
        "SD_ENDPOINTS": _list(env, "SD_ENDPOINTS"),
        "SD_CONNECT_TIMEOUT": _float(env, "SD_CONNECT_TIMEOUT", 3.0),
        "SD_READ_TIMEOUT": _float(env, "SD_READ_TIMEOUT", 300.0),
        "SD_ACQUIRE_TIMEOUT": _float(env, "SD_ACQUIRE_TIMEOUT", 600.0),
        "SD_COOLDOWN": _float(env, "SD_COOLDOWN", 15.0),
        "SD_MAX_ATTEMPTS": _int(env, "SD_MAX_ATTEMPTS", 3),
        "SD_PROBE_TIMEOUT": _float(env, "SD_PROBE_TIMEOUT", 2.0),
        # Generation records kept in memory while MongoDB is down, written when it returns.
        "RECORD_BACKLOG": _int(env, "RECORD_BACKLOG", 16),
        # Per-client limit on POST /generate, requests per minute; 0 turns it off.
        "GENERATE_RATE_LIMIT": _int(env, "GENERATE_RATE_LIMIT", 0),
    }
