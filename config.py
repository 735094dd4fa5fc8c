"""Configuration read from environment variables, with safe defaults.

Every setting is a key of the Flask config with the same name as its environment
variable. `.env` in the project directory is loaded for local runs (it never
overrides a variable that is already set). Nothing secret has a default. Relative paths
(DATA_DIR) are taken from the project directory, not the working directory, so the
server finds its data wherever it is started from.
"""
from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dotenv import load_dotenv

# App ids of POST /generate: each maps to a handler registered in apps/generate.py (APPS).
APP_PAINT = 0

MB = 1024 * 1024
PROJECT_DIR = Path(__file__).resolve().parent
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


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


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """Return the variable, lower-cased, if it is one of `choices`; unset means the first choice."""
    raw = (env.get(name) or "").strip().lower() or choices[0]
    if raw not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {env.get(name)!r}")
    return raw


def _list(env: Mapping[str, str], name: str) -> list[str]:
    return [item.strip() for item in (env.get(name) or "").split(",") if item.strip()]


_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in _TRUE | _FALSE:
        raise ValueError(f"{name} must be 1 or 0 (or true/false, yes/no, on/off), got {env.get(name)!r}")
    return raw in _TRUE


def _networks(env: Mapping[str, str], name: str) -> tuple[Network, ...]:
    try:
        # strict=False: 192.168.1.7/24 means that host's network, as operators often write it.
        return tuple(ipaddress.ip_network(item, strict=False) for item in _list(env, name))
    except ValueError as error:
        raise ValueError(f"{name} must be comma-separated networks such as 10.0.0.0/8 or 192.168.1.5, "
                         f"got {env.get(name)!r}: {error}") from None


def _path(env: Mapping[str, str], name: str, default: str) -> str:
    # Joining keeps an absolute path as it is and puts a relative one under the project.
    return str(PROJECT_DIR / Path(env.get(name) or default).expanduser())


def from_env(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Return the server's settings from `env` (default: the process environment and `.env`)."""
    if env is None:
        load_dotenv(PROJECT_DIR / ".env", override=False)
        env = os.environ
    chat_deployment = env.get("AZURE_OPENAI_DEPLOYMENT") or "gpt-4o"
    return {
        # HTTP server
        # Loopback only: serving the network is a deliberate HOST=0.0.0.0.
        "HOST": env.get("HOST") or "127.0.0.1",
        "PORT": _int(env, "PORT", 5000),
        # gunicorn's worker processes (gunicorn.conf.py); more than 1 needs REDIS_URL.
        "WEB_CONCURRENCY": _int(env, "WEB_CONCURRENCY", 1),
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
        # The researcher token: researcher routes need it; while it is unset they answer loopback only.
        "API_TOKEN": env.get("API_TOKEN") or None,
        # Client networks that may use the participant routes; empty means any.
        "ALLOWED_CLIENTS": _networks(env, "ALLOWED_CLIENTS"),
        # On: only usernames a researcher registered (flask participants add) may take part.
        "PARTICIPANT_REGISTER": _bool(env, "PARTICIPANT_REGISTER", False),
        # Reverse proxies in front of the server whose X-Forwarded-For may be believed.
        "TRUSTED_PROXIES": _int(env, "TRUSTED_PROXIES", 0),
        "LOG_LEVEL": env.get("LOG_LEVEL") or "INFO",
        # Storage: MONGO_URI unset means the embedded wire-compatible store under DATA_DIR.
        "MONGO_URI": env.get("MONGO_URI") or None,
        "MONGO_DB": env.get("MONGO_DB") or "Refinity",
        "MONGO_TIMEOUT_MS": _int(env, "MONGO_TIMEOUT_MS", 3000),
        "DATA_DIR": _path(env, "DATA_DIR", "var"),
        # Below this much free space on the embedded store's disk, /readyz says it is full.
        "MIN_FREE_DISK_MB": _int(env, "MIN_FREE_DISK_MB", 16),
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
        # How a step asks GPT: "auto" structured outputs (a JSON schema per step), falling back to
        # the text protocol for a deployment that refuses schemas; "on" never falls back; "off" text only.
        "GPT_STRUCTURED": _choice(env, "GPT_STRUCTURED", ("auto", "on", "off")),
        # Tokens an answer may take; an answer cut at this budget is asked again once with twice as many.
        "GPT_MAX_TOKENS": _int(env, "GPT_MAX_TOKENS", 2000),
        # Stable Diffusion WebUI instances, shared by every request of the server.
        "SD_ENDPOINTS": _list(env, "SD_ENDPOINTS"),
        "SD_CONNECT_TIMEOUT": _float(env, "SD_CONNECT_TIMEOUT", 3.0),
        "SD_READ_TIMEOUT": _float(env, "SD_READ_TIMEOUT", 300.0),
        "SD_ACQUIRE_TIMEOUT": _float(env, "SD_ACQUIRE_TIMEOUT", 600.0),
        "SD_COOLDOWN": _float(env, "SD_COOLDOWN", 15.0),
        "SD_MAX_ATTEMPTS": _int(env, "SD_MAX_ATTEMPTS", 3),
        "SD_PROBE_TIMEOUT": _float(env, "SD_PROBE_TIMEOUT", 2.0),
        # Whose image an instance takes next: "fair" serves participants in turn, "fifo" in arrival order.
        "SD_QUEUE_ORDER": _choice(env, "SD_QUEUE_ORDER", ("fair", "fifo")),
        # Images of one participant that may wait for an instance at once; more answer 429. 0 turns it off.
        "SD_MAX_QUEUED_PER_PARTICIPANT": _int(env, "SD_MAX_QUEUED_PER_PARTICIPANT", 0),
        # Seconds between tries to write the generation records that wait on disk for the database.
        "RECORD_RETRY": _float(env, "RECORD_RETRY", 5.0),
        # Seconds around a participant's last /paint/start or /paint/save within which a generation
        # from the same client (address and User-Agent) may be attributed to them.
        "ATTRIBUTION_WINDOW": _float(env, "ATTRIBUTION_WINDOW", 3600.0),
        # Generations as jobs (apps/jobs.py). JOB_WORKERS: jobs a process runs at once; more wait,
        # in arrival order, so keep it above the generations participants run at once (the SD pool
        # and GPT_MAX_CONCURRENCY set the pace, not this). JOB_KEEP: seconds an ended job stays in
        # memory; JOB_HEARTBEAT: seconds between the marks that a process still runs its jobs;
        # JOB_KEEPALIVE: seconds between the keep-alive comments of an event stream.
        "JOB_WORKERS": _int(env, "JOB_WORKERS", 256),
        "JOB_KEEP": _float(env, "JOB_KEEP", 10.0),  # its result (images as base64) is memory: briefly
        "JOB_HEARTBEAT": _float(env, "JOB_HEARTBEAT", 10.0),
        "JOB_KEEPALIVE": _float(env, "JOB_KEEPALIVE", 15.0),
        # Several server processes (gunicorn -w N, several hosts) share the SD pool, the GPT and
        # /generate limits and the job events through one Redis (core/shared.py); unset, a
        # process keeps them to itself and must be the only one. SHARED_TTL: seconds what a
        # process holds there (instance leases, GPT slots) outlives it when it is killed.
        "REDIS_URL": env.get("REDIS_URL") or None,
        "REDIS_PREFIX": env.get("REDIS_PREFIX") or "refinity:",
        "SHARED_TTL": _float(env, "SHARED_TTL", 10.0),
        # Per-client limit on POST /generate, requests per minute; 0 turns it off.
        "GENERATE_RATE_LIMIT": _int(env, "GENERATE_RATE_LIMIT", 0),
    }
