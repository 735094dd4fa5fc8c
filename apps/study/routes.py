"""The dashboard's routes under /study: HTML pages, their images, the export, and the login.

Every page, image and the export is on the `dashboard` surface (core.security): the
bearer token or the dashboard pass, or this machine while no API_TOKEN is set. Without
them a page redirects to the login form, which with the right token sets the pass as an
HttpOnly, SameSite=Strict cookie for /study only (Secure over https). Failures are plain
HTML pages with the status the envelope would have had. None of these routes is in the
OpenAPI document: they are pages for people, not the API.
"""
from __future__ import annotations

import json
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

from flask import (
    Blueprint, Response, current_app, redirect, render_template, request, send_file, send_from_directory, url_for,
)
from pydantic import Field
from werkzeug.exceptions import HTTPException

from apps.paint.sessions import Stage
from apps.paint.study_export import StudyExportError, export_study
from apps.records import COLLECTION, UNTRUSTED
from apps.study import participants, thumbnails
from apps.study.cards import cards_of, inputs_of
from apps.study.step_timeline import step_timeline
from core import validation as v
from core.db import get_db
from core.envelope import ApiError, BadInput, NotFound
from core.image_store import is_key
from core.security import (
    DASHBOARD_COOKIE, PASS_SECONDS, LoginRequired, dashboard, dashboard_login, dashboard_pass, token_matches,
)

PREFIX = "/study"
# An image never changes under its hash; kept by the researcher's browser only, never by a shared cache.
CACHED_FOR_GOOD = "private, max-age=31536000, immutable"
ASSETS = Path(__file__).parent / "static"
# The pages load only this server's stylesheet and images; forms post only here.
PAGE_CSP = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
            "frame-ancestors 'none'; base-uri 'none'")

bp = Blueprint("study", __name__, url_prefix=PREFIX, template_folder="templates", static_folder=None)


class TimelineQuery(v.Body):
    """The filters of a participant's timeline."""

    stage: Stage | None = None
    type: Annotated[int, Field(ge=min(participants.GENERATION_TYPES), le=max(participants.GENERATION_TYPES)),
                    v.FROM_QUERY] | None = None


class ExportQuery(v.Body):
    """Whose part of the study to export (everyone's when absent)."""

    username: v.Username | None = None


@bp.app_template_filter("study_time")
def _study_time(moment: datetime | None) -> str:
    """Write a time as the pages show it: UTC, to the second."""
    return "—" if moment is None else moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


@bp.app_template_filter("study_json")
def _study_json(value: object) -> str:
    """Write a stored value as readable JSON, Chinese as it is."""
    return json.dumps(value, ensure_ascii=False, indent=1, default=str)


def _page(template: str, status: int = 200, **context) -> Response:
    html = render_template(f"study/{template}", token_set=bool(current_app.config["API_TOKEN"]), **context)
    response = Response(html, status=status, content_type="text/html; charset=utf-8")
    response.headers["Content-Security-Policy"] = PAGE_CSP
    response.headers["Cache-Control"] = "no-store"  # what a page shows of the study stays off shared disks
    return response


# -- failures and the login ----------------------------------------------------------------
@bp.errorhandler(LoginRequired)
def _to_login(error: LoginRequired) -> Response:
    return redirect(url_for("study.login", next=request.full_path.rstrip("?")), code=303)


@bp.errorhandler(ApiError)
def _failure(error: ApiError) -> Response:
    response = _page("error.html", error.status, message=error.message, code=error.status)
    response.headers.update(error.headers)
    return response


@bp.errorhandler(HTTPException)
def _http_failure(error: HTTPException) -> Response:
    return _page("error.html", error.code or 500, message=error.description, code=error.code)


def _next_page(raw: str | None) -> str:
    """Return where to go after signing in: a dashboard path of this server, never elsewhere."""
    target = urlsplit(raw or "")
    if target.scheme or target.netloc or not (target.path == PREFIX or target.path.startswith(PREFIX + "/")):
        return url_for("study.participants_page")
    return target.path + (f"?{target.query}" if target.query else "")


@bp.route("/login", methods=["GET", "POST"])
@dashboard_login
def login() -> Response:
    """Show the login form, or check its token and give the dashboard pass."""
    if not current_app.config["API_TOKEN"]:
        return redirect(url_for("study.participants_page"), code=303)  # this machine needs no login
    target = _next_page(request.values.get("next"))
    if request.method != "POST":
        return _page("login.html", next=target)
    if not token_matches(request.form.get("token", "")):
        # The form again, as for any form with a wrong value (401 would ask for HTTP authentication).
        return _page("login.html", 422, next=target, wrong=True)
    response = redirect(target, code=303)
    response.set_cookie(DASHBOARD_COOKIE, dashboard_pass(), max_age=PASS_SECONDS, path=PREFIX,
                        secure=request.is_secure, httponly=True, samesite="Strict")
    return response


@bp.post("/logout")
@dashboard_login
def logout() -> Response:
    """Take the dashboard pass back and show the login form."""
    response = redirect(url_for("study.login"), code=303)
    response.delete_cookie(DASHBOARD_COOKIE, path=PREFIX, secure=request.is_secure, httponly=True, samesite="Strict")
    return response


@bp.get("/assets/<name>")
@dashboard_login
def asset(name: str) -> Response:
    """Serve the pages' stylesheet (the login form's too, so it needs no pass)."""
    if not (ASSETS / name).is_file():
        raise NotFound(f"the dashboard has no asset {name!r}")
    response = send_from_directory(ASSETS, name, max_age=3600)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


# -- the pages -----------------------------------------------------------------------------
@bp.get("")
@dashboard
def participants_page() -> Response:
    """Show every participant, with their saves, sketches, generations and attribution."""
    return _page("participants.html", overview=participants.overview(get_db()))


@bp.get("/participants/<path:username>")
@dashboard
def timeline_page(username: str) -> Response:
    """Show a participant's saves and generations in time order, filtered by stage and type."""
    query = v.parse_query(TimelineQuery, request.args)
    found = participants.timeline(get_db(), username, stage=query.stage, type_=query.type)
    return _page("timeline.html", timeline=found, stage=query.stage, type=query.type)


@bp.get("/participants/<path:username>/schemes/<stage>/<int:index>")
@dashboard
def scheme_page(username: str, stage: str, index: int) -> Response:
    """Show the scheme at one position of a stage's list at each save where it changed."""
    versions = participants.scheme_history(get_db(), username, stage, index)
    return _page("scheme.html", username=username, stage=stage, index=index, versions=versions)


@bp.get("/generations/<record_id>")
@dashboard
def generation_page(record_id: str) -> Response:
    """Show one generation: its steps on a timeline, each step's prompt and answer, and its cards."""
    key = v.object_id(record_id, "a record")
    record = get_db()[COLLECTION].find_one({"_id": key})
    if record is None:
        raise NotFound(f"no generation has the id {key}")
    return _page("generation.html", record=record, attribution=record["participant"],
                 timeline=step_timeline(record), cards=cards_of(record.get("result")),
                 input=inputs_of(record.get("input")), created=participants.utc(record.get("createdAt")))


# -- images and the export -----------------------------------------------------------------
def _key(raw: str) -> str:
    key = raw.lower()
    if not is_key(key):
        raise BadInput("sha256", "must be 64 hex characters")
    return key


def _immutable(response: Response, etag: str) -> Response:
    response.headers["Cache-Control"] = CACHED_FOR_GOOD
    response.headers.update(UNTRUSTED)
    response.set_etag(etag)
    return response.make_conditional(request)


@bp.get("/thumbnails/<key>")
@dashboard
def thumbnail(key: str) -> Response:
    """Serve a small copy of a stored image, made once and kept under DATA_DIR."""
    key = _key(key)
    if request.if_none_match.contains(thumbnails.etag(key)):
        return _immutable(Response(status=304), thumbnails.etag(key))  # the browser has it: no read at all
    directory = Path(current_app.config["DATA_DIR"]) / thumbnails.DIRECTORY
    data = thumbnails.thumbnail(get_db(), directory, key)
    return _immutable(Response(data, content_type=thumbnails.CONTENT_TYPE), thumbnails.etag(key))


@bp.get("/images/<key>")
@dashboard
def image(key: str) -> Response:
    """Serve a stored image whole, if its bytes are a PNG, JPEG or WebP image."""
    key = _key(key)
    picture = thumbnails.stored_picture(get_db(), key)
    return _immutable(Response(picture.data, content_type=picture.content_type), key)


@bp.get("/export.zip")
@dashboard
def export() -> Response:
    """Send the study export (or one participant's part) as a zip made for this download."""
    query = v.parse_query(ExportQuery, request.args)
    data_dir = Path(current_app.config["DATA_DIR"])
    data_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="study-export-", dir=data_dir))  # beside the data: room for it
    try:
        target = folder / "study.zip"
        try:
            export_study(get_db(), target, username=query.username, as_zip=True)
        except StudyExportError as error:  # a participant nobody is named
            raise NotFound(str(error)) from None
        handle = target.open("rb")
    finally:
        shutil.rmtree(folder)  # the open handle keeps the bytes until the answer is sent and closes it
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"study-{query.username or get_db().name}-{stamp}.zip"
    response = send_file(handle, mimetype="application/zip", as_attachment=True, download_name=name)
    response.headers["Cache-Control"] = "no-store"
    return response
