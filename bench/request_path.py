"""Which of the repository's files run during one request: the files a reader follows for it.

Sends one /generate of type 1 and one /paint/save through Flask's test client (simulated
GPT and WebUI on loopback, an embedded store in a temporary folder) with a profiler that
notes every file of the server whose code runs, templates included (tests, simulators
and benchmarks are not the server). Prints the count and the files per request. Not a test:

    python -m bench.request_path
"""
from __future__ import annotations

import sys
import tempfile
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from core.embedded_store import EmbeddedStore
from core.factory import close_app, create_app
from simulators.chat import ChatSimulator
from simulators.webui import SDWebUISimulator
from tests.helpers import SKETCH, save_body, scheme

ROOT = Path(__file__).resolve().parents[1]
# The server's own code and templates (a virtualenv inside the checkout, as CI's, is not).
COUNTED = ("apps", "core", "agent", "settings", "app.py", "config.py")


def files_run(call: Callable[[], Any]) -> list[str]:
    """Return the repository files whose code runs while `call()` runs, on any thread."""
    seen: set[str] = set()

    def note(frame: Any, event: str, arg: Any) -> None:
        path = Path(frame.f_code.co_filename)
        if path.is_relative_to(ROOT):
            relative = path.relative_to(ROOT)
            if relative.parts[0] in COUNTED:
                seen.add(relative.as_posix())

    sys.setprofile(note)
    threading.setprofile(note)
    try:
        response = call()
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
    assert response.status_code == 200, response.get_json()
    return sorted(seen)


def main() -> None:
    """Print the files each request runs."""
    with tempfile.TemporaryDirectory() as data:
        store = EmbeddedStore(Path(data) / "mongo").start()
        chat = ChatSimulator(api_key="bench").start()
        sds = [SDWebUISimulator().start() for _ in range(3)]
        app = create_app({"MONGO_URI": store.uri, "MONGO_DB": f"path_{uuid.uuid4().hex[:8]}",
                          "AZURE_OPENAI_ENDPOINT": chat.url, "AZURE_OPENAI_API_KEY": "bench",
                          "SD_ENDPOINTS": [sd.url for sd in sds]}, env={})
        try:
            client = app.test_client()
            client.post("/paint/start", json={"username": "reader"})  # first-visit work is not the path
            requests = {
                "POST /generate type 1": lambda: client.post("/generate", json={"appid": 0, "type": 1, "prompts": {
                    "designTask": "设计一款运动辅助产品", "designTexts": ["可折叠"], "designImage": SKETCH,
                    "schemeId": 2}}),
                "POST /paint/save": lambda: client.post("/paint/save", json=save_body(
                    "reader", rapid=[scheme("a"), scheme("b")])),
            }
            for name, call in requests.items():
                files = files_run(call)
                python = [f for f in files if f.endswith(".py")]
                print(f"{name}: {len(python)} Python files, {len(files) - len(python)} templates")
                for file in files:
                    print(f"    {file}")
        finally:
            close_app(app)
            for sd in sds:
                sd.stop()
            chat.stop()
            store.stop()


if __name__ == "__main__":
    main()
