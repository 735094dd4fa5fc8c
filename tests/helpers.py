"""Small builders shared by tests."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

PNG_1PX = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
)


def scheme(name: str = "", image_b64: str = PNG_1PX) -> dict[str, Any]:
    """Return a scheme shaped like the ones the web client saves."""
    return {
        "name": name,
        "canvasSvg": '<svg xmlns="http://www.w3.org/2000/svg"><path d="M0 0L1 1"/></svg>',
        "canvasImage": f"data:image/png;base64,{image_b64}",
        "paths": [{"drawMode": True, "strokeColor": "#000", "strokeWidth": 5, "paths": [{"x": 1.5, "y": 2}]}],
        "texts": [{"text": "可折叠", "position": {"x": 10, "y": 20}}],
    }


def save_body(username: str, rapid=(), deep=(), convergence=(), task="设计一款运动辅助产品", stage="快速发散") -> dict:
    """Return a /paint/save body in the client's shape."""
    return {
        "username": username,
        "data": {
            "designSchemes": {
                "准备": None,
                "快速发散": list(rapid),
                "深入发散": list(deep),
                "收敛": list(convergence),
                "完成": None,
                "禁止": None,
            },
            "designTask": task,
            "currentStage": stage,
        },
    }


def wait_until(condition: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll `condition` until it is truthy and return its value; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.002)
    raise AssertionError(f"timed out waiting for {what}")
