"""Study export and import: a round trip into an empty database reproduces every session and save."""
from __future__ import annotations

import base64
import csv
import hashlib
import json
import os
import zipfile
from datetime import datetime, timezone

import pytest
from bson import ObjectId

from apps.attribution import Attribution, Evidence, as_dict
from apps.paint.study_export import StudyExportError, export_study
from apps.paint.study_import import StudyImportError, import_study
from core.db import get_db
from core.image_store import Image, put_image
from tests.helpers import save_body, scheme

PNG = b"\x89PNG\r\n\x1a\n"


def png_uri(size: int) -> str:
    """Return a data URI of `size` random bytes behind a PNG signature."""
    return "data:image/png;base64," + base64.b64encode(PNG + os.urandom(size - len(PNG))).decode()


def drawn(name: str) -> dict:
    """Return a scheme whose image, SVG and path list all leave the document."""
    points = [{"x": i * 0.5, "y": float(i)} for i in range(1200)]
    return {"name": name, "canvasSvg": "<svg>" + "<path/>" * 3000 + "</svg>", "canvasImage": png_uri(3_000),
            "paths": [{"drawMode": True, "paths": points}], "texts": []}


def _generation(db, username: str) -> ObjectId:
    """Insert a generation record shaped like apps.records writes, with two stored images."""
    keys = [put_image(db, Image(PNG + os.urandom(64), "image/png")) for _ in range(2)]
    record_id = ObjectId()
    db.generations.insert_one({
        "_id": record_id, "createdAt": datetime.now(timezone.utc), "appid": 0, "type": 1, "username": None,
        "participant": as_dict(Attribution(username=username, method="sketch", candidates=[username], evidence=[
            Evidence(method="sketch", candidates=[username], detail="1 of 1 sketch images in their saves")])),
        "clues": {"sketches": [keys[0]]},
        "input": {"designImage": {"sha256": keys[0], "contentType": "image/png"}},
        "steps": [{"kind": "llm", "images": [keys[0]], "raw": "x"}],
        "result": {"result": [{"items": [{"image": {"sha256": keys[1], "contentType": "image/png"}}]}]},
        "status": "succeeded", "error": None,
    })
    return record_id


@pytest.fixture
def study(client, db):
    """A study: alice with three saves, bob in the old format, carol converted, and two generations."""
    client.post("/paint/start", json={"username": "alice"})
    a, b = drawn("a"), drawn("b")
    for body in (save_body("alice", rapid=[a], task="one"),
                 save_body("alice", rapid=[a, b], stage="快速发散", task="two"),
                 save_body("alice", rapid=[a, b], deep=[drawn("c")], stage="深入发散", task="three")):
        assert client.post("/paint/save", json=body).status_code == 200
    for name in ("bob", "carol"):
        db.participants.insert_one({"username": name, "currentStage": "快速发散", "designTask": f"{name}'s",
                                    "rapidDivergenceSchemes": [scheme(f"{name} old")], "deepDivergenceSchemes": [],
                                    "convergenceSchemes": []})
    client.post("/paint/save", json=save_body("carol", rapid=[scheme("carol new")]))
    _generation(db, "alice")
    _generation(db, "bob")
    return ["alice", "bob", "carol"]


def _snapshot(client, names: list[str]) -> dict:
    """Return every participant's start payload, history and past states, as the API gives them."""
    seen = {}
    for name in names:
        saves = client.get(f"/paint/history?username={name}").get_json()["data"]["saves"]
        states = [client.get(f"/paint/history/{s['id']}").get_json()["data"] for s in saves]
        seen[name] = {"start": client.post("/paint/start", json={"username": name}).get_json()["data"],
                      "saves": saves, "states": states}
    return seen


@pytest.mark.parametrize("as_zip", [False, True])
def test_export_then_import_reproduces_every_session_and_save(make_app, app, client, db, study, tmp_path, as_zip):
    before = _snapshot(client, study)
    target = tmp_path / ("study.zip" if as_zip else "study")
    with app.app_context():
        manifest = export_study(db, target, as_zip=as_zip)
    assert manifest["counts"]["participants"] == 3 and manifest["counts"]["generations"] == 2
    assert manifest["counts"]["session_history"] == 5  # alice 3, carol's old state and her save

    fresh = make_app()
    with fresh.app_context():
        written = import_study(get_db(), target)
    assert written["participants"] == 3 and written["blobs"] == manifest["counts"]["blobs"]
    after = _snapshot(fresh.test_client(), study)
    assert json.dumps(after, ensure_ascii=False) == json.dumps(before, ensure_ascii=False)
    with fresh.app_context():
        imported = list(get_db().generations.find().sort("createdAt", 1))
    assert imported == list(db.generations.find().sort("createdAt", 1))


def test_export_folder_holds_tables_and_blobs_named_by_hash(app, db, study, tmp_path):
    with app.app_context():
        manifest = export_study(db, tmp_path / "out")
    out = tmp_path / "out"
    for key, info in manifest["blobs"].items():
        data = (out / info["file"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == key and info["file"].startswith(f"blobs/{key}.")
    extensions = {info["file"].rsplit(".", 1)[1] for info in manifest["blobs"].values()}
    assert extensions == {"png", "svg", "json"}
    with (out / "saves.csv").open(encoding="utf-8") as rows:
        saves = list(csv.DictReader(rows))
    assert [r["designTask"] for r in saves if r["username"] == "alice"] == ["one", "two", "three"]
    with (out / "sessions.csv").open(encoding="utf-8") as rows:
        assert {r["username"]: r["format"] for r in csv.DictReader(rows)} == {
            "alice": "refs", "bob": "inline", "carol": "refs"}
    with (out / "generations.csv").open(encoding="utf-8") as rows:
        rows = list(csv.DictReader(rows))
    assert sorted(r["attributedTo"] for r in rows) == ["alice", "bob"]
    assert {r["attributionMethod"] for r in rows} == {"sketch"}
    assert all(r["attributionEvidence"] == f"sketch: 1 of 1 sketch images in their saves ({r['attributedTo']})"
               for r in rows)
    schemes = (out / "schemes.csv").read_text(encoding="utf-8")
    assert schemes.count("canvasImage=blobs/") == 5  # alice's a, b and c, carol's old and new


def test_import_refuses_a_database_with_study_data_unless_forced(app, db, study, tmp_path):
    with app.app_context():
        export_study(db, tmp_path / "out")
        with pytest.raises(StudyImportError, match="--force"):
            import_study(db, tmp_path / "out")
        written = import_study(db, tmp_path / "out", force=True)
    assert written["participants"] == 3 and written["blobs"] == 0  # every blob was already there


def test_export_of_one_participant_and_of_an_unknown_one(app, db, study, tmp_path):
    with app.app_context():
        manifest = export_study(db, tmp_path / "bob.zip", username="bob", as_zip=True)
        with pytest.raises(StudyExportError, match="nobody"):
            export_study(db, tmp_path / "nobody", username="nobody")
    assert manifest["counts"] == {"participants": 1, "session_history": 0, "session_schemes": 0,
                                  "generations": 1, "blobs": 3}  # two generation images, bob's inline sketch
    with zipfile.ZipFile(tmp_path / "bob.zip") as archive:
        lines = archive.read("records/participants.jsonl").decode().splitlines()
        assert len(lines) == 1 and json.loads(lines[0])["username"] == "bob"


def test_cli_commands_export_and_import(make_app, app, study, tmp_path):
    target = tmp_path / "cli.zip"
    result = app.test_cli_runner().invoke(args=["export-study", str(target), "--zip"])
    assert result.exit_code == 0, result.output
    assert "3 participants" in result.output and zipfile.is_zipfile(target)
    fresh = make_app()
    runner = fresh.test_cli_runner()
    result = runner.invoke(args=["import-study", str(target)])
    assert result.exit_code == 0, result.output
    assert "3 participants" in result.output
    again = runner.invoke(args=["import-study", str(target)])
    assert again.exit_code != 0 and "--force" in again.output
    taken = runner.invoke(args=["export-study", str(target)])
    assert taken.exit_code != 0  # never overwrites an existing export
