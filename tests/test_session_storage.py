"""Saved sessions over the real wire connection: large sessions, blobs stored once, atomic saves."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import threading

import bson

from apps.paint import scheme_store
from tests.helpers import save_body, scheme

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
LISTS = ("rapidDivergenceSchemes", "deepDivergenceSchemes", "convergenceSchemes")


def png_uri(size: int) -> str:
    """Return a data URI of `size` random bytes behind a PNG signature (they do not compress)."""
    data = PNG_SIGNATURE + os.urandom(size - len(PNG_SIGNATURE))
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def sketch(name: str, image: str, *, strokes: int = 1) -> dict:
    """Return a scheme shaped like the client's, with `strokes` points in its path list."""
    points = [{"x": i + 0.5, "y": -i, "p": 1.0} for i in range(strokes)]
    svg = '<svg xmlns="http://www.w3.org/2000/svg">' + "".join(
        f'<path d="M{p["x"]} {p["y"]}L1 1"/>' for p in points) + "</svg>"
    return {"name": name, "canvasSvg": svg, "canvasImage": image,
            "paths": [{"drawMode": True, "strokeColor": "#000", "strokeWidth": 5, "paths": points}],
            "texts": [{"text": "可折叠", "position": {"x": 10, "y": 20}}]}


def exact(value) -> str:
    """Return JSON text that differs whenever values, types or key order differ."""
    return json.dumps(value, ensure_ascii=False)


def start(client, username: str) -> dict:
    response = client.post("/paint/start", json={"username": username})
    assert response.status_code == 200
    return response.get_json()["data"]


def save(client, body: dict):
    response = client.post("/paint/save", json=body)
    assert response.status_code == 200, response.get_json()
    return response


def test_session_far_beyond_16mb_round_trips_unchanged(client, db):
    start(client, "big")
    rapid = [sketch(f"s{i}", png_uri(500_000), strokes=400 if i % 10 == 0 else 1) for i in range(40)]
    body = save_body("big", rapid=rapid[:30], deep=rapid[30:], stage="深入发散")
    assert len(json.dumps(body)) > 24 * 1024 * 1024
    save(client, body)
    data = start(client, "big")
    assert exact(data["rapidDivergenceSchemes"]) == exact(rapid[:30])
    assert exact(data["deepDivergenceSchemes"]) == exact(rapid[30:])
    assert data["currentStage"] == "深入发散"
    participant = db.participants.find_one({"username": "big"})
    assert len(bson.encode(participant)) < 16 * 1024
    # Values under the 16 KB threshold stay inline, so a scheme's document is a few of those at most.
    assert max(len(bson.encode(doc)) for doc in db[scheme_store.SCHEMES].find()) < 64 * 1024


def test_every_kind_of_large_value_moves_out_and_comes_back_exactly(client, db):
    start(client, "kinds")
    odd = sketch("😀 名字", png_uri(300), strokes=1000)
    odd["paths"][0]["paths"][0].update({"one": 1.0, "minus_zero": -0.0, "big": 2**53, "none": None})
    odd["long"] = "文" * 20_000
    odd["canvasSvg"] = "\n  " + odd["canvasSvg"]
    odd["oddUri"] = "data:image/png;base64,iVBORw0K\nGgo="  # not canonical base64: kept as written
    odd["small"] = {"nested": [1, 2, {"z": 1, "a": 2}]}
    save(client, save_body("kinds", convergence=[odd, scheme("tiny")], stage="收敛"))
    assert exact(start(client, "kinds")["convergenceSchemes"]) == exact([odd, scheme("tiny")])
    stored = db[scheme_store.SCHEMES].find_one({"scheme.name": "😀 名字"})
    kinds = {key: stored["scheme"][key]["kind"] for key in stored["moved"]}
    assert kinds == {"canvasSvg": "text", "canvasImage": "dataUri", "paths": "json", "long": "text"}
    assert stored["scheme"]["oddUri"] == odd["oddUri"] and stored["scheme"]["small"] == odd["small"]
    types = {f["metadata"]["contentType"] for f in db["fs.files"].find()}
    assert {"image/png", "image/svg+xml", "application/json", "text/plain; charset=utf-8"} <= types


def test_unchanged_images_are_stored_once_and_checked_in_one_query(gated_app, wire_gate, database_of):
    client, db = gated_app.test_client(), database_of(gated_app)
    start(client, "steady")
    schemes, lookups = [], []
    for i in range(6):
        schemes.append(sketch(f"s{i}", png_uri(2_000)))
        finds, uploads = wire_gate.count("find", "fs.files"), wire_gate.count("insert", "fs.files")
        save(client, save_body("steady", rapid=schemes, task=f"round {i}"))
        lookups.append(wire_gate.count("find", "fs.files") - finds)
        assert wire_gate.count("insert", "fs.files") - uploads == 1  # only the new scheme's image
    assert len(set(lookups)) == 1, f"image lookups grew with the session: {lookups}"
    assert len(list(db["fs.files"].find({}, {"_id": 1}))) == 6
    assert len(list(db[scheme_store.SCHEMES].find({}, {"_id": 1}))) == 6
    finds, uploads = wire_gate.count("find", "fs.files"), wire_gate.count("insert", "fs.files")
    save(client, save_body("steady", rapid=schemes, task="again, unchanged"))
    assert (wire_gate.count("find", "fs.files"), wire_gate.count("insert", "fs.files")) == (finds, uploads)
    assert exact(start(client, "steady")["rapidDivergenceSchemes"]) == exact(schemes)


def test_concurrent_saves_leave_one_whole_state_and_every_save_in_history(app, client, db):
    start(client, "racer")
    bodies = [save_body("racer", rapid=[sketch(f"r{i}", png_uri(5_000)), scheme(f"x{i}")],
                        deep=[sketch(f"d{i}", png_uri(3_000))], task=f"task {i}") for i in range(8)]
    barrier = threading.Barrier(len(bodies))
    statuses = []

    def send(body):
        own = app.test_client()
        barrier.wait()
        statuses.append(own.post("/paint/save", json=body).status_code)

    threads = [threading.Thread(target=send, args=(body,)) for body in bodies]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * len(bodies)
    final = start(client, "racer")
    sent = {b["data"]["designTask"]: b for b in bodies}
    winner = sent[final["designTask"]]["data"]["designSchemes"]
    assert exact(final["rapidDivergenceSchemes"]) == exact(winner["快速发散"])
    assert exact(final["deepDivergenceSchemes"]) == exact(winner["深入发散"])
    saves = client.get("/paint/history?username=racer").get_json()["data"]["saves"]
    assert sorted(s["designTask"] for s in saves) == sorted(sent)
    assert saves[0]["designTask"] == final["designTask"]  # the latest revision is the current state


def test_failed_save_keeps_the_previous_state_and_history(gated_app, wire_gate):
    client = gated_app.test_client()
    start(client, "fragile")
    first = save_body("fragile", rapid=[sketch("kept", png_uri(4_000))], task="first")
    save(client, first)
    before = start(client, "fragile")
    listed = client.get("/paint/history?username=fragile").get_json()["data"]
    # The database refuses the write that would make the save current (after the one that numbered it).
    wire_gate.refuse("findAndModify", "participants", skip=1)
    lost = save_body("fragile", rapid=[sketch("lost", png_uri(4_000))], task="lost")
    response = client.post("/paint/save", json=lost)
    assert response.status_code == 503
    body = response.get_json()
    assert body["success"] is False and body["code"] == 3 and "previous state is kept" in body["message"]
    assert start(client, "fragile") == before
    assert client.get("/paint/history?username=fragile").get_json()["data"] == listed
    save(client, save_body("fragile", rapid=[sketch("next", png_uri(4_000))], task="next"))
    tasks = [s["designTask"] for s in client.get("/paint/history?username=fragile").get_json()["data"]["saves"]]
    assert tasks == ["next", "first"]


def test_state_saved_but_unmarked_entry_stays_visible(gated_app, wire_gate):
    client = gated_app.test_client()
    start(client, "halfway")
    wire_gate.refuse("update", "session_history")  # the state is written; marking its entry fails
    save(client, save_body("halfway", rapid=[scheme("one")], task="one"))
    assert wire_gate.count("update", "session_history") == 1, "the save never marked its entry"
    listed = client.get("/paint/history?username=halfway").get_json()["data"]["saves"]
    assert [s["designTask"] for s in listed] == ["one"]
    save(client, save_body("halfway", rapid=[scheme("two")], task="two"))
    listed = client.get("/paint/history?username=halfway").get_json()["data"]["saves"]
    assert [s["designTask"] for s in listed] == ["two", "one"]  # the next save settled it


def test_old_format_documents_load_and_convert_on_save(client, db):
    legacy = [scheme("old a"), sketch("old b", png_uri(1_000))]
    db.participants.insert_one({"username": "veteran", "currentStage": "快速发散", "designTask": "旧任务",
                                "rapidDivergenceSchemes": legacy, "deepDivergenceSchemes": [],
                                "convergenceSchemes": []})
    data = start(client, "veteran")
    assert exact(data["rapidDivergenceSchemes"]) == exact(legacy) and data["designTask"] == "旧任务"
    save(client, save_body("veteran", rapid=legacy + [scheme("new")], task="新任务"))
    doc = db.participants.find_one({"username": "veteran"})
    assert "rapidDivergenceSchemes" not in doc and len(doc["schemeRefs"]["rapidDivergenceSchemes"]) == 3
    assert exact(start(client, "veteran")["rapidDivergenceSchemes"]) == exact(legacy + [scheme("new")])
    saves = client.get("/paint/history?username=veteran").get_json()["data"]["saves"]
    assert [(s["kind"], s["designTask"]) for s in saves] == [("save", "新任务"), ("legacy", "旧任务")]
    old = client.get(f"/paint/history/{saves[1]['id']}").get_json()["data"]
    assert exact(old["rapidDivergenceSchemes"]) == exact(legacy) and old["_id"] == data["_id"]


def test_save_has_its_own_body_limit_and_answers_413_beyond_it(make_app, db):
    client = make_app(MAX_CONTENT_LENGTH=1024, SAVE_MAX_CONTENT_LENGTH=64 * 1024).test_client()
    start(client, "limits")
    save(client, save_body("limits", rapid=[sketch("fits", png_uri(20_000))]))
    assert client.post("/paint/start", json={"username": "a" * 2000}).status_code == 413
    response = client.post("/paint/save", json=save_body("limits", rapid=[sketch("big", png_uri(80_000))]))
    assert response.status_code == 413
    body = response.get_json()
    assert body["success"] is False and body["code"] == 1 and "larger" in body["message"]
    assert [s["name"] for s in start(client, "limits")["rapidDivergenceSchemes"]] == ["fits"]


def test_save_for_unknown_participant_writes_no_blobs(client, db):
    response = client.post("/paint/save", json=save_body("ghost", rapid=[sketch("g", png_uri(2_000))]))
    assert response.status_code == 404
    assert db["fs.files"].find_one({}) is None and db[scheme_store.SCHEMES].find_one({}) is None


def test_missing_blob_is_a_clear_storage_error(client, db):
    start(client, "damaged")
    save(client, save_body("damaged", rapid=[sketch("d", png_uri(1_000))]))
    image_key = db[scheme_store.SCHEMES].find_one({})["scheme"]["canvasImage"]["sha256"]
    db[scheme_store.SCHEMES].update_one({}, {"$set": {"scheme.canvasImage.sha256": "0" * 64}})
    response = client.post("/paint/start", json={"username": "damaged"})
    assert response.status_code == 500 and response.get_json()["code"] == 3
    assert "missing" in response.get_json()["message"]
    assert db["fs.files"].find_one({"_id": image_key}) is not None


def test_schemes_stored_under_old_ids_still_load_and_keep_their_blobs(gated_app, wire_gate, database_of):
    client, db = gated_app.test_client(), database_of(gated_app)
    start(client, "elder")
    kept = sketch("kept", png_uri(2_000))
    save(client, save_body("elder", rapid=[kept]))
    # Before orjson a scheme's id was the SHA-256 of json.dumps with ASCII escapes.
    old_id = hashlib.sha256(json.dumps(kept, separators=(",", ":")).encode("ascii")).hexdigest()
    doc = db[scheme_store.SCHEMES].find_one({})
    db[scheme_store.SCHEMES].insert_one({**doc, "_id": old_id})
    db[scheme_store.SCHEMES].delete_one({"_id": doc["_id"]})
    db.participants.update_one({"username": "elder"}, {"$set": {"schemeRefs.rapidDivergenceSchemes": [old_id]}})
    assert exact(start(client, "elder")["rapidDivergenceSchemes"]) == exact([kept])
    uploads = wire_gate.count("insert", "fs.files")
    save(client, save_body("elder", rapid=[kept], task="again"))
    assert wire_gate.count("insert", "fs.files") == uploads  # the scheme's document is stored again, its blobs not
    assert sorted(d["_id"] for d in db[scheme_store.SCHEMES].find({}, {"_id": 1})) == sorted([old_id, doc["_id"]])
    assert exact(start(client, "elder")["rapidDivergenceSchemes"]) == exact([kept])
