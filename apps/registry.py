"""The apps behind POST /generate, keyed by their `appid` (the APP_* ids in config.py).

Each app is a handler object with the shape of `GenerationApp`. The registry builds every
handler once per server at startup, so a handler that checks its templates in its
constructor stops a misconfigured server before it takes requests. Adding an app means a
folder under apps/ with its handler class, an APP_* id in config.py and a line in `APPS`.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Protocol

from flask import Flask, current_app

import config
from core.envelope import BadInput

APP_EXTENSION = "generation_apps"


class GenerationApp(Protocol):
    """What the /generate route needs of an app."""

    types: frozenset[int]

    def validate(self, type: int, prompts: Any) -> Any:
        """Return the checked request of `type` built from `prompts`, or raise BadInput."""

    def describe(self, type: int, request: Any) -> dict[str, Any]:
        """Return the request as a JSON-able dict (images as core.image_store.Image)."""

    def run(self, type: int, request: Any, gpt: Any, pool: Any, trace: Any) -> dict[str, Any]:
        """Run the pipeline of `type` and return the response `data`."""


def _paint(app: Flask) -> GenerationApp:
    from apps.paint.generation import PaintApp

    return PaintApp()


# appid -> how to build its handler from the Flask app.
APPS: Mapping[int, Callable[[Flask], GenerationApp]] = {
    config.APP_PAINT: _paint,
}


class AppRegistry:
    """The handlers of one server, looked up by appid and checked against their types."""

    def __init__(self, handlers: Mapping[int, GenerationApp]) -> None:
        self._handlers = dict(handlers)

    def handler(self, appid: Any, type: Any) -> GenerationApp:
        """Return the handler of `appid` if it has generation `type`, else raise BadInput."""
        if isinstance(appid, bool) or not isinstance(appid, int):
            raise BadInput("appid", "must be an integer")
        if appid not in self._handlers:
            raise BadInput("appid", f"unknown app {appid}; known apps are {_listed(self._handlers)}")
        if isinstance(type, bool) or not isinstance(type, int):
            raise BadInput("type", "must be an integer")
        handler = self._handlers[appid]
        if type not in handler.types:
            raise BadInput("type", f"app {appid} has no type {type}; its types are {_listed(handler.types)}")
        return handler


def _listed(ids: Any) -> str:
    return ", ".join(str(i) for i in sorted(ids))


def init_app(app: Flask) -> AppRegistry:
    """Build every registered app's handler once and attach the registry to `app`."""
    registry = AppRegistry({appid: build(app) for appid, build in APPS.items()})
    app.extensions[APP_EXTENSION] = registry
    return registry


def get_registry() -> AppRegistry:
    """Return the current server's app registry."""
    return current_app.extensions[APP_EXTENSION]
