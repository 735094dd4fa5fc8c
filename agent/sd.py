"""Client of one AUTOMATIC1111 Stable Diffusion WebUI instance (its `--api` HTTP routes).

`build_payload` writes a txt2img request body in the WebUI's field names from exactly the
options it is given (the study's settings are in settings/sd_options.json, not here).
Each image of an answer is decoded here, once, into a `core.image_store.Image`. Every
failure becomes a typed `SDError` naming the instance (never its credentials) and the
cause; a reply without a decodable image is an error too, so no caller ever receives an
empty image. `progress` reads how far the running job is and `interrupt` ends it early
(the WebUI then answers its txt2img with what it made so far). `agent.pool.SDInstancePool`
spreads jobs over several instances.
"""
from __future__ import annotations

import copy
import http.client
import json
import logging
import socket
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple
from urllib.parse import unquote, urlsplit, urlunsplit

import requests
from urllib3.exceptions import ReadTimeoutError

from agent.errors import SDBadRequest, SDBadResponse, SDConnectionError, SDServerError, SDTimeout
from core.image_store import Image, ImageDecodeError, decode_image

log = logging.getLogger(__name__)

Timeout = float | tuple[float, float]
# 4xx answers that say the instance is misconfigured (wrong credentials, started without
# --api) or busy, not that our payload is wrong: another instance may well succeed.
INSTANCE_FAULT_STATUSES = frozenset({401, 403, 404, 405, 408, 429})
TXT2IMG = "/sdapi/v1/txt2img"
PROGRESS = "/sdapi/v1/progress"
INTERRUPT = "/sdapi/v1/interrupt"

# Fields of the WebUI's txt2img request model; `prompt` and `negative_prompt` are arguments.
TXT2IMG_FIELDS = frozenset({
    "styles", "seed", "subseed", "subseed_strength", "seed_resize_from_h", "seed_resize_from_w",
    "sampler_name", "sampler_index", "scheduler", "batch_size", "n_iter", "steps", "cfg_scale",
    "width", "height", "restore_faces", "tiling", "do_not_save_samples", "do_not_save_grid",
    "eta", "denoising_strength", "s_min_uncond", "s_churn", "s_tmax", "s_tmin", "s_noise",
    "override_settings", "override_settings_restore_afterwards", "refiner_checkpoint",
    "refiner_switch_at", "disable_extra_networks", "comments", "enable_hr", "firstphase_width",
    "firstphase_height", "hr_scale", "hr_upscaler", "hr_second_pass_steps", "hr_resize_x",
    "hr_resize_y", "hr_checkpoint_name", "hr_sampler_name", "hr_scheduler", "hr_prompt",
    "hr_negative_prompt", "force_task_id", "script_name", "script_args", "send_images",
    "save_images", "alwayson_scripts", "infotext",
})


def _check_key(key: str) -> None:
    if key in TXT2IMG_FIELDS:
        return
    if key == "Model":
        raise ValueError("unknown Stable Diffusion option 'Model': the WebUI ignores it, use 'checkpoint'")
    if key in ("prompt", "negative_prompt"):
        raise ValueError(f"Stable Diffusion option {key!r} is an argument of build_payload, not an option")
    raise ValueError(f"unknown Stable Diffusion option {key!r}: use an AUTOMATIC1111 txt2img field name")


def build_payload(prompt: str, negative_prompt: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Return the txt2img body sending exactly `options`; raise ValueError naming an unknown key.

    Options are txt2img field names plus two shorthands: `checkpoint` (sent as
    override_settings.sd_model_checkpoint, the only place the WebUI reads it) and `style`
    (sent as `styles: [style]`).
    """
    fields: dict[str, Any] = {}
    checkpoint = None
    for key, value in options.items():
        if key == "checkpoint":
            checkpoint = value
        elif key == "style":
            fields["styles"] = [value] if value else []
        else:
            _check_key(key)
            fields[key] = copy.deepcopy(value)  # the options are shared by every request
    override = dict(fields.pop("override_settings", None) or {})
    if checkpoint:
        # The WebUI switches models only through override_settings; explicit overrides win.
        override = {"sd_model_checkpoint": checkpoint, **override}
    payload = {"prompt": prompt, "negative_prompt": negative_prompt, **fields}
    if override:
        payload["override_settings"] = override
    return payload


@dataclass(frozen=True)
class SDEndpoint:
    """One WebUI instance: base URL and display name without credentials, and basic auth."""

    base_url: str
    name: str
    auth: tuple[str, str] | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> SDEndpoint:
        """Return the endpoint of an SD_ENDPOINTS entry like `http://user:pass@host:7860`."""
        parts = urlsplit(url.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            shown = url.rsplit("@", 1)[-1]  # never echo a password
            raise ValueError(f"SD endpoint must look like http://[user:pass@]host:port, got {shown!r}")
        host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
        netloc = f"{host}:{parts.port}" if parts.port else host
        path = parts.path.rstrip("/")
        auth = None
        if parts.username is not None:
            auth = (unquote(parts.username), unquote(parts.password or ""))
        return cls(urlunsplit((parts.scheme, netloc, path, "", "")), netloc + path, auth)


class Generation(NamedTuple):
    """Images (decoded PNG, JPEG or WebP, never empty) and the WebUI's `info` as a dict."""

    images: list[Image]
    info: dict[str, Any]


def _endpoint(endpoint: SDEndpoint | str) -> SDEndpoint:
    return endpoint if isinstance(endpoint, SDEndpoint) else SDEndpoint.parse(endpoint)


def _timeouts(timeout: Timeout) -> tuple[float, float]:
    return timeout if isinstance(timeout, tuple) else (timeout, timeout)


def _socket_errors(error: BaseException) -> Iterator[BaseException]:
    """Yield the errors wrapped inside a requests error (urllib3 nests them several levels deep)."""
    seen, todo = set(), [error]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        todo.extend(e for e in nested if isinstance(e, BaseException))


def _connection_cause(error: Exception) -> str:
    causes = (
        (ConnectionRefusedError, "connection refused"), (ConnectionResetError, "connection reset"),
        (http.client.RemoteDisconnected, "connection closed without an answer"),
        (ConnectionAbortedError, "connection closed without an answer"),
        (socket.gaierror, "host name not found"),
    )
    for inner in _socket_errors(error):
        for kind, cause in causes:
            if isinstance(inner, kind):
                return cause
    return f"connection failed ({type(error).__name__})"


def _detail(response: requests.Response) -> str:
    """Return the error text of a WebUI reply (FastAPI `detail` or the WebUI's `error`), short."""
    try:
        body = response.json()
    except ValueError:
        return response.reason or ""
    if isinstance(body, dict):
        detail = body.get("detail") or body.get("errors") or body.get("error") or ""
        if isinstance(detail, list):  # FastAPI validation: keep where and what, never the input
            detail = "; ".join(
                f"{'.'.join(str(p) for p in item.get('loc', []))}: {item.get('msg', '')}"
                for item in detail[:3] if isinstance(item, dict)
            )
        return str(detail)[:200]
    return ""


def _request(endpoint: SDEndpoint | str, method: str, path: str, payload: Any, timeout: Timeout) -> Any:
    endpoint = _endpoint(endpoint)
    where, call = f"SD instance {endpoint.name}", f"{method} {path}"
    connect, read = _timeouts(timeout)
    try:
        # A fresh connection per call: calls last seconds, and a restarted WebUI then never
        # meets a stale pooled socket.
        response = requests.request(method, endpoint.base_url + path, json=payload,
                                    auth=endpoint.auth, timeout=(connect, read))
    except requests.ConnectTimeout as e:
        raise SDTimeout(f"{where}: no connection within {connect:g}s ({call})") from e
    except requests.Timeout as e:
        raise SDTimeout(f"{where}: no answer within {read:g}s ({call})") from e
    except requests.ConnectionError as e:
        if e.args and isinstance(e.args[0], ReadTimeoutError):  # stalled while reading the body
            raise SDTimeout(f"{where}: no answer within {read:g}s ({call})") from e
        raise SDConnectionError(f"{where}: {_connection_cause(e)} ({call})") from e
    except requests.RequestException as e:
        raise SDConnectionError(f"{where}: request failed, {type(e).__name__} ({call})") from e
    status = response.status_code
    if status >= 500 or status in INSTANCE_FAULT_STATUSES:
        detail = _detail(response)
        raise SDServerError(f"{where}: HTTP {status}{' ' + detail if detail else ''} ({call})", status=status)
    if status >= 400:
        raise SDBadRequest(f"{where}: rejected the request, HTTP {status}: {_detail(response)} ({call})",
                           status=status)
    try:
        return response.json()
    except ValueError as e:
        raise SDBadResponse(f"{where}: the answer is not JSON (HTTP {status}, {call})") from e


def ping(endpoint: SDEndpoint | str, *, timeout: Timeout) -> None:
    """Check that the instance answers: GET /internal/ping, or /sdapi/v1/progress if that is missing."""
    try:
        _request(endpoint, "GET", "/internal/ping", None, timeout)
    except SDServerError as e:
        if e.status != 404:
            raise
        _request(endpoint, "GET", PROGRESS, None, timeout)


def _image(where: str, index: int, image: Any) -> Image:
    try:
        return decode_image(image)
    except ImageDecodeError as e:
        raise SDBadResponse(f"{where}: image {index} {e}") from e


def text2Image(endpoint: SDEndpoint | str, payload: dict[str, Any], *, timeout: Timeout) -> Generation:
    """Run txt2img on the instance and return its images, each decoded once, and info."""
    endpoint = _endpoint(endpoint)
    body = _request(endpoint, "POST", TXT2IMG, payload, timeout)
    where = f"SD instance {endpoint.name}"
    images = body.get("images") if isinstance(body, dict) else None
    if not isinstance(images, list) or not images:
        raise SDBadResponse(f"{where}: the answer has no images (POST {TXT2IMG})")
    info = body.get("info")
    try:
        info = info if isinstance(info, dict) else json.loads(info or "{}")
    except (TypeError, ValueError):
        log.warning("%s: unreadable info in the answer to %s", where, TXT2IMG)
        info = {}
    return Generation([_image(where, i, image) for i, image in enumerate(images)],
                      info if isinstance(info, dict) else {})


class Progress(NamedTuple):
    """How far the instance's running job is, as GET /sdapi/v1/progress reports it."""

    running: bool  # False: the instance is idle and the rest means nothing
    progress: float  # 0..1 over all the job's batches
    eta: float  # seconds left, the WebUI's estimate
    step: int  # the sampling step of the batch being sampled
    steps: int  # the sampling steps of a batch
    preview: str | None  # the live preview, base64, when asked for and drawn


def progress(endpoint: SDEndpoint | str, *, skip_current_image: bool = True, timeout: Timeout) -> Progress:
    """Return the progress of the instance's running job (with its live preview unless `skip_current_image`)."""
    endpoint = _endpoint(endpoint)
    path = f"{PROGRESS}?skip_current_image={str(skip_current_image).lower()}"
    body = _request(endpoint, "GET", path, None, timeout)
    try:
        state = body.get("state") or {}
        preview = body.get("current_image")
        return Progress(bool(state.get("job_count")), float(body["progress"]), float(body.get("eta_relative") or 0.0),
                        int(state.get("sampling_step") or 0), int(state.get("sampling_steps") or 0),
                        preview if isinstance(preview, str) and preview else None)
    except (AttributeError, KeyError, TypeError, ValueError) as e:
        raise SDBadResponse(f"SD instance {endpoint.name}: the answer is not a progress report (GET {PROGRESS})") from e


def interrupt(endpoint: SDEndpoint | str, *, timeout: Timeout) -> None:
    """Ask the instance to end its running job early (it does nothing when idle)."""
    _request(endpoint, "POST", INTERRUPT, None, timeout)
