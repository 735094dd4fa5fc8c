"""The generative backends of an app: one GPT client and one SD instance pool, shared by all requests.

Both are built once per app from its config and closed when the process exits. Neither
raises for missing settings: an unconfigured backend fails the requests that need it
with a clear BackendError instead of stopping the server.
"""
from __future__ import annotations

import atexit
import logging

from flask import Flask, current_app

from agent.gpt import GPTClient
from agent.pool import SDInstancePool
from core import shared

log = logging.getLogger(__name__)

GPT = "gpt"
SD_POOL = "sd_pool"


def init_app(app: Flask) -> None:
    """Build the GPT client and the SD pool of `app` and close them at exit."""
    gpt = GPTClient.from_config(app.config, app.extensions[shared.EXTENSION])
    pool = SDInstancePool.from_config(app.config, app.extensions[shared.EXTENSION])
    app.extensions[GPT] = gpt
    app.extensions[SD_POOL] = pool
    log.info("backends: GPT provider %s, %d Stable Diffusion instance(s) serving images in %s order",
             gpt.provider, pool.size, app.config["SD_QUEUE_ORDER"])
    atexit.register(close_app_backends, app)


def close_app_backends(app: Flask) -> None:
    """Close the SD pool and the GPT client of `app` (closing twice is harmless)."""
    for name in (SD_POOL, GPT):
        backend = app.extensions.get(name)
        if backend is None:
            continue
        try:
            backend.close()
        except Exception:  # shutting down: report it and go on closing the rest
            log.warning("closing %s failed", type(backend).__name__, exc_info=True)


def get_gpt() -> GPTClient:
    """Return the current app's GPT client."""
    return current_app.extensions[GPT]


def get_pool() -> SDInstancePool:
    """Return the current app's Stable Diffusion instance pool."""
    return current_app.extensions[SD_POOL]
