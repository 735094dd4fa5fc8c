"""MongoDB unreachable: a 503 envelope within seconds, and recovery when it returns."""
from __future__ import annotations

import time

from core.embedded_store import EmbeddedStore, free_port


def test_database_down_then_back(make_app, tmp_path):
    port = free_port()
    app = make_app(MONGO_URI=f"mongodb://127.0.0.1:{port}/", MONGO_TIMEOUT_MS=500)
    client = app.test_client()

    started = time.monotonic()
    response = client.post("/paint/start", json={"username": "alice"})
    elapsed = time.monotonic() - started
    assert response.status_code == 503
    body = response.get_json()
    assert body["success"] is False and body["code"] == 3 and "database" in body["message"]
    assert elapsed < 10  # "within a few seconds", with a wide margin for slow machines
    assert client.get("/ping").get_data(as_text=True) == "pong"

    store = EmbeddedStore(tmp_path / "late-mongo", port=port).start()
    try:
        response = client.post("/paint/start", json={"username": "alice"})
        assert response.status_code == 200
        assert response.get_json()["data"]["username"] == "alice"
    finally:
        store.stop()
