"""A stand-in for an AUTOMATIC1111 Stable Diffusion WebUI started with `--api` (a test double).

A real HTTP server that answers the API routes the server uses (txt2img, img2img, progress,
interrupt, skip, options, sd-models, internal/ping), checks payloads the way the WebUI's
FastAPI models do (422 with a `detail` list), draws cheap PNGs (`simulators.png`) instead of
running a model, and runs one generation at a time behind a lock, as the WebUI's queue does.

A generation samples `n_iter` batches of its sampling steps (img2img: only the
`denoising_strength` share of `steps`, plus one), one after another; `latency` is spread
over all of them and `per_step` is added for each. It keeps a `WebUIState` as the WebUI's
`shared.state`, which GET /sdapi/v1/progress reports with the WebUI's own formula, and the
live preview (`current_image`) the WebUI draws every `show_progress_every_n_steps` steps.
POST /sdapi/v1/interrupt does what the WebUI's does: the step being sampled is the last,
the batch cut short is decoded from its half-denoised latent (a noisy picture) and no later
batch starts, and the txt2img/img2img request still answers 200 with the images made so far
and their `info`; the next queued request runs whole. POST /sdapi/v1/skip cuts short only
the batch being sampled. Both answer 200 when nothing runs, and do nothing then.

Tests and benchmarks read what it did (`jobs`, `max_concurrency`, `max_in_flight`, `pings`,
`progress_polls`, `interrupts`, `skips`) and inject faults at runtime: `fail`,
`hang`/`release`, `die_after`, `refuse`/`revive`, `heal`. A held job has begun but samples
nothing, and progress still answers, as a stalled WebUI's does; an interrupt does not
unstick it. A job still running when the instance dies (`die_after(0)` during a held or slow
job) gets no answer, and requests queued behind it are dropped, like a crashed WebUI's.
Run it alone with `python -m simulators.webui --port 7864 --latency 0.5`.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import threading
import time
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any, NamedTuple
from urllib.parse import quote

from simulators.http import DROP, Listener, Reply, Request, command_line, serve, serve_until_stopped
from simulators.png import render_png

MODELS = [
    {
        "title": "sd_xl_base_1.0.safetensors [31e35c80fc]",
        "model_name": "sd_xl_base_1.0",
        "hash": "31e35c80fc",
        "sha256": "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
        "filename": "/models/Stable-diffusion/sd_xl_base_1.0.safetensors",
        "config": None,
    },
    {
        "title": "v1-5-pruned-emaonly.safetensors [6ce0161689]",
        "model_name": "v1-5-pruned-emaonly",
        "hash": "6ce0161689",
        "sha256": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
        "filename": "/models/Stable-diffusion/v1-5-pruned-emaonly.safetensors",
        "config": None,
    },
]
DEFAULT_OPTIONS = {
    "sd_model_checkpoint": MODELS[0]["title"],
    "sd_vae": "Automatic",
    "samples_format": "png",
    "CLIP_stop_at_last_layers": 1,
    "live_previews_enable": True,
    "show_progress_every_n_steps": 10,  # -1: a preview only when a batch ends
}
# The WebUI's own defaults for fields a request leaves out.
FIELD_DEFAULTS = {"width": 512, "height": 512, "steps": 20, "batch_size": 1, "n_iter": 1}
DENOISING_DEFAULT = 0.75  # img2img's default denoising_strength
INT_LIMITS = {"width": (1, 4096), "height": (1, 4096), "steps": (1, 150), "batch_size": (1, 8), "n_iter": (1, 16)}
AUTH_CHALLENGE = {"WWW-Authenticate": 'Basic realm="sdapi"'}
# How pydantic reads a boolean query parameter, as FastAPI does.
BOOL_WORDS = {"1": True, "true": True, "t": True, "yes": True, "y": True, "on": True,
              "0": False, "false": False, "f": False, "no": False, "n": False, "off": False}


@dataclass(frozen=True)
class Job:
    """One finished generation: when it arrived, started and ended (time.monotonic), how far it got."""

    arrived: float
    start: float
    end: float
    prompt: str
    payload: dict[str, Any]
    batch_steps: tuple[int, ...] = ()  # sampling steps each batch got, for the batches begun
    interrupted: bool = False  # POST /sdapi/v1/interrupt ended it early
    skipped: int = 0  # batches POST /sdapi/v1/skip cut short

    @property
    def steps_done(self) -> int:
        """Return the sampling steps it got over all its batches."""
        return sum(self.batch_steps)


class Sampled(NamedTuple):
    """How a generation's sampling went: steps per batch begun, and what cut it short."""

    batch_steps: list[int]
    interrupted: bool
    skipped: int


class WebUIState:
    """The WebUI's `shared.state`: the job running now, as GET /sdapi/v1/progress reports it."""

    def __init__(self) -> None:
        # The WebUI's values before its first job; end() keeps most of them, as the WebUI's does.
        self.skipped = self.interrupted = self.stopping_generation = False
        self.job, self.job_count, self.job_no, self.job_timestamp = "", 0, 0, "0"
        self.sampling_step = self.sampling_steps = 0
        self.time_start = 0.0
        self.textinfo: str | None = None
        self.preview: str | None = None  # the live preview, a base64 PNG
        self.preview_step = 0
        self.latent = False  # a step was sampled, so there is something to preview
        self.seed_text, self.image_size = "", (1, 1)

    def begin(self, job: str, job_count: int) -> None:
        """Start a job of `job_count` batches, clearing what the last one left."""
        self.skipped = self.interrupted = self.stopping_generation = False
        self.job, self.job_count, self.job_no = job, job_count, 0
        self.job_timestamp = time.strftime("%Y%m%d%H%M%S")
        self.sampling_step, self.time_start, self.textinfo = 0, time.monotonic(), None
        self.preview, self.preview_step, self.latent = None, 0, False

    def begin_batch(self, batch: int, batches: int, steps: int, seed_text: str, size: tuple[int, int]) -> None:
        """Start sampling one batch, as the sampler's launch does."""
        if batches > 1:
            self.job = f"Batch {batch + 1} out of {batches}"
        self.sampling_steps, self.sampling_step = steps, 0
        self.seed_text, self.image_size = seed_text, size

    def step_done(self, done: int) -> None:
        """Count a sampled step; the WebUI reports the index of the last step, not how many."""
        self.sampling_step, self.latent = done - 1, True

    def next_job(self, preview_every: int | None) -> None:
        """End a batch, drawing its preview first when previews come only at batch ends."""
        if preview_every == -1:
            self._draw_preview()
        self.job_no += 1
        self.sampling_step = self.preview_step = 0

    def end(self) -> None:
        """End the job: progress reads idle again."""
        self.job, self.job_count = "", 0

    def update_preview(self, preview_every: int | None) -> None:
        """Draw a new preview when `preview_every` steps passed since the last one (None: off)."""
        if preview_every is not None and preview_every >= 0 \
                and self.sampling_step - self.preview_step >= preview_every:
            self._draw_preview()

    def _draw_preview(self) -> None:
        if not self.latent:
            return
        # Drawn at latent size, a pixel per 8x8 block, as the WebUI's cheapest preview is.
        width, height = (max(1, side // 8) for side in self.image_size)
        png = render_png(width, height, f"{self.seed_text}|preview {self.sampling_step}")
        self.preview, self.preview_step = base64.b64encode(png).decode("ascii"), self.sampling_step

    def dict(self) -> dict[str, Any]:
        """Return the `state` object of the progress reply."""
        return {
            "skipped": self.skipped, "interrupted": self.interrupted,
            "stopping_generation": self.stopping_generation, "job": self.job,
            "job_count": self.job_count, "job_timestamp": self.job_timestamp, "job_no": self.job_no,
            "sampling_step": self.sampling_step, "sampling_steps": self.sampling_steps,
        }


class SDWebUISimulator:
    """Serve the WebUI API on `host:port` (0: a free port) with simulated latency and faults."""

    def __init__(self, latency: float = 0.0, per_step: float | None = None,
                 auth: str | tuple[str, str] | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self.latency, self.per_step = latency, per_step
        self.host, self.port = host, port
        self._auth = tuple(auth.split(":", 1)) if isinstance(auth, str) else auth
        self._state = threading.Lock()  # counters, faults, options, the WebUI state
        self._changed = threading.Condition(self._state)  # an interrupt, skip or death for sampling
        self._generation = threading.Lock()  # one job at a time, like the WebUI's queue lock
        self._control = threading.Lock()  # the listening socket
        self._listener: Listener | None = None
        self._closed: list[Listener] = []  # refused listeners whose requests stop() still joins
        self._released = threading.Event()
        self._released.set()
        self._jobs: list[Job] = []
        self._active = self._max_active = self._in_flight = self._max_in_flight = self._pings = 0
        self._progress_polls = 0
        self._interrupts: list[float] = []
        self._skips: list[float] = []
        self._fail_left: float = 0
        self._hang_for: float | None = None
        self._die_at: int | None = None
        self._dead = False
        self._shared = WebUIState()
        self._options = dict(DEFAULT_OPTIONS)

    # -- serving -----------------------------------------------------------------------
    def start(self) -> SDWebUISimulator:
        """Start listening; return self."""
        self.revive()
        return self

    def stop(self) -> None:
        """Stop listening, let held jobs finish, and join every server thread."""
        self.release()
        with self._control:
            self._close_listener()
            closed, self._closed = self._closed, []
        for listener in closed:
            listener.join()

    def __enter__(self) -> SDWebUISimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Return the base URL, without credentials."""
        return f"http://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """Return the URL to put in SD_ENDPOINTS (with `user:pass@` when auth is on)."""
        if not self._auth:
            return self.url
        user, password = (quote(part, safe="") for part in self._auth)
        return f"http://{user}:{password}@{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        """Return whether connections are accepted."""
        return self._listener is not None

    def refuse(self) -> None:
        """Close the listening socket now, so new connections are refused."""
        with self._control:
            self._close_listener()

    def revive(self) -> None:
        """Listen again on the same port (requests are no longer dropped after a die)."""
        with self._state:
            self._dead = False
        with self._control:
            if self._listener is None:
                self._listener = serve(self.route, "SDWebUISimulator/1.0", self.host, self.port)
                self.port = self._listener.port

    def _close_listener(self) -> None:
        if self._listener is not None:
            self._listener.close()
            self._closed.append(self._listener)
            self._listener = None

    # -- faults ------------------------------------------------------------------------
    def fail(self, times: int | None = None) -> None:
        """Answer 500 to the next `times` jobs (None or negative: to every job until healed)."""
        with self._state:
            self._fail_left = math.inf if times is None or times < 0 else times

    def hang(self, seconds: float = 3600.0) -> None:
        """Hold every job for `seconds` or until `release()`."""
        with self._state:
            self._hang_for = seconds
            self._released.clear()

    def release(self) -> None:
        """Let held jobs go on and stop holding new ones."""
        with self._state:
            self._hang_for = None
            self._released.set()

    def die_after(self, jobs: int) -> None:
        """Stop listening after `jobs` more finished jobs; queued requests are dropped."""
        with self._state:
            self._die_at = len(self._jobs) + jobs
        if jobs <= 0:
            self._die()

    def heal(self) -> None:
        """Stop failing, holding and dying, and listen again."""
        with self._state:
            self._fail_left, self._die_at = 0, None
        self.release()
        self.revive()

    def _die(self) -> None:
        with self._state:
            self._dead, self._die_at = True, None
            self._changed.notify_all()
        self.refuse()

    # -- what happened -----------------------------------------------------------------
    @property
    def jobs(self) -> list[Job]:
        """Return the finished generations, oldest first."""
        with self._state:
            return list(self._jobs)

    @property
    def max_concurrency(self) -> int:
        """Return the most generations ever running at once (the lock keeps it at 1)."""
        return self._max_active

    @property
    def max_in_flight(self) -> int:
        """Return the most generation requests ever open at once, queued ones included."""
        return self._max_in_flight

    @property
    def pings(self) -> int:
        """Return how many GET /internal/ping requests were answered."""
        return self._pings

    @property
    def progress_polls(self) -> int:
        """Return how many GET /sdapi/v1/progress requests arrived."""
        return self._progress_polls

    @property
    def interrupts(self) -> list[float]:
        """Return when each POST /sdapi/v1/interrupt arrived (time.monotonic), oldest first."""
        with self._state:
            return list(self._interrupts)

    @property
    def skips(self) -> list[float]:
        """Return when each POST /sdapi/v1/skip arrived (time.monotonic), oldest first."""
        with self._state:
            return list(self._skips)

    # -- the API -----------------------------------------------------------------------
    def route(self, request: Request) -> Reply:
        """Answer one request of the WebUI API (or drop it, when the instance died under it)."""
        if request.path.startswith("/sdapi/") and not self._authorised(request.headers.get("Authorization")):
            return Reply(401, {"detail": "Incorrect username or password"}, AUTH_CHALLENGE)
        body = request.body
        routes = {
            ("POST", "/sdapi/v1/txt2img"): lambda: self._generate("txt2img", body),
            ("POST", "/sdapi/v1/img2img"): lambda: self._generate("img2img", body),
            ("GET", "/sdapi/v1/progress"): lambda: self._progress(request.query),
            ("POST", "/sdapi/v1/interrupt"): self._interrupt,
            ("POST", "/sdapi/v1/skip"): self._skip,
            ("GET", "/sdapi/v1/options"): lambda: Reply(200, dict(self._options)),
            ("POST", "/sdapi/v1/options"): lambda: self._set_options(body),
            ("GET", "/sdapi/v1/sd-models"): lambda: Reply(200, MODELS),
            ("GET", "/internal/ping"): self._ping,
        }
        if (request.method, request.path) in routes:
            return routes[(request.method, request.path)]()
        if any(known == request.path for _, known in routes):
            return Reply(405, {"detail": "Method Not Allowed"})
        return Reply(404, {"detail": "Not Found"})

    def _authorised(self, authorization: str | None) -> bool:
        if not self._auth:
            return True
        expected = "Basic " + base64.b64encode(":".join(self._auth).encode()).decode()
        return hmac.compare_digest((authorization or "").encode(), expected.encode())

    def _generate(self, kind: str, body: bytes) -> Reply:
        arrived = time.monotonic()
        with self._state:
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        try:
            payload, problems = _decode(body)
            problems = problems or validate(kind, payload)
            if problems:
                return Reply(422, {"detail": problems})
            with self._generation:
                return self._run(kind, payload, arrived)
        finally:
            # Counted down before the reply is written, so a client that got its answer
            # and sends the next job never finds the previous one still open.
            with self._state:
                self._in_flight -= 1

    def _run(self, kind: str, payload: dict[str, Any], arrived: float) -> Reply:
        with self._state:
            if self._dead:
                return DROP
            self._active += 1
            self._max_active = max(self._max_active, self._active)
            failing, hang_for = self._fail_left > 0, self._hang_for
            self._fail_left -= 1 if failing else 0
            self._shared.begin(f"scripts_{kind}", payload.get("n_iter", FIELD_DEFAULTS["n_iter"]))
        try:
            if failing:
                return Reply(500, {"error": "RuntimeError", "detail": "", "body": "", "errors": "simulated failure"})
            if hang_for:
                self._released.wait(hang_for)
            return self._draw(kind, payload, arrived)
        finally:
            with self._state:
                self._active -= 1
                self._shared.end()

    def _draw(self, kind: str, payload: dict[str, Any], arrived: float) -> Reply:
        start = time.monotonic()
        steps, batches = sampling_steps(kind, payload), payload.get("n_iter", FIELD_DEFAULTS["n_iter"])
        duration = self.latency + (self.per_step * steps * batches if self.per_step else 0.0)
        checkpoint = self._options["sd_model_checkpoint"]
        # The latency models GPU time, so drawing the PNGs is part of it, not added to it.
        reply = generation_reply(payload, checkpoint)
        sampled = self._sample(payload, start, duration / (steps * batches), steps)
        if sampled is None:  # the instance died during the job: like a crashed WebUI, no answer
            return DROP
        if sampled.batch_steps != [steps] * batches:
            cut_short = [None if done == steps else done for done in sampled.batch_steps]
            reply = generation_reply(payload, checkpoint, cut_short)
        with self._state:
            if self._dead:
                return DROP
            self._jobs.append(Job(arrived, start, time.monotonic(), payload.get("prompt", ""), payload,
                                  tuple(sampled.batch_steps), sampled.interrupted, sampled.skipped))
            dying = self._die_at is not None and len(self._jobs) >= self._die_at
        if dying:
            self._die()
        return Reply(200, reply)

    def _sample(self, payload: dict[str, Any], start: float, tick: float, steps: int) -> Sampled | None:
        """Sample each batch a step per `tick` seconds until done or cut short; None if the instance died."""
        shared, seeds = self._shared, batch_seed_texts(payload)
        size = (payload.get("width", FIELD_DEFAULTS["width"]), payload.get("height", FIELD_DEFAULTS["height"]))
        batch_steps, interrupted, skipped, origin, ticks = [], False, 0, start, 0

        def stirred() -> bool:
            return shared.interrupted or shared.skipped or self._dead

        for batch, seed_text in enumerate(seeds):
            with self._state:
                shared.skipped = False  # a skip cuts short only the batch it came during
                if shared.interrupted:
                    interrupted = True
                    break
                shared.begin_batch(batch, len(seeds), steps, seed_text, size)
            done = 0
            while done < steps:
                with self._state:
                    self._changed.wait_for(stirred, origin + (ticks + 1) * tick - time.monotonic())
                    if self._dead:
                        return None
                    if shared.interrupted or shared.skipped:
                        interrupted = shared.interrupted
                        skipped += not interrupted
                        break
                    done, ticks = done + 1, ticks + 1
                    shared.step_done(done)
            with self._state:
                shared.next_job(self._preview_every())
            # Steps after a cut keep their pace instead of catching up on the time it saved.
            origin = time.monotonic() - ticks * tick
            batch_steps.append(done)
        return Sampled(batch_steps, interrupted, skipped)

    def _preview_every(self) -> int | None:
        """Return the steps between live previews (-1: at batch ends), None when they are off."""
        every = self._options.get("show_progress_every_n_steps")
        if not self._options.get("live_previews_enable") or not _is_int(every):
            return None
        return every

    def _progress(self, query: dict[str, list[str]]) -> Reply:
        with self._state:
            self._progress_polls += 1
        words = query.get("skip_current_image", ["false"])
        skip_image = BOOL_WORDS.get(words[-1].strip().lower())
        if skip_image is None:
            problem = detail(["skip_current_image"], "Input should be a valid boolean, unable to interpret input",
                             "bool_parsing", where="query")
            return Reply(422, {"detail": [problem]})
        with self._state:
            if self._shared.job_count:
                self._shared.update_preview(self._preview_every())
            return Reply(200, progress_reply(self._shared, time.monotonic(), skip_image))

    def _interrupt(self) -> Reply:
        with self._state:
            self._interrupts.append(time.monotonic())
            self._shared.interrupted = True
            self._changed.notify_all()
        return Reply(200, {})

    def _skip(self) -> Reply:
        with self._state:
            self._skips.append(time.monotonic())
            self._shared.skipped = True
            self._changed.notify_all()
        return Reply(200, None)  # the WebUI's skip route returns nothing: JSON null

    def _set_options(self, body: bytes) -> Reply:
        options, problems = _decode(body)
        if problems or not isinstance(options, dict):
            problems = problems or [detail([], "Input should be a valid dictionary", "dict_type")]
            return Reply(422, {"detail": problems})
        with self._state:
            self._options.update(options)
        return Reply(200, None)

    def _ping(self) -> Reply:
        with self._state:
            self._pings += 1
        return Reply(200, {})


# -- request checks and reply bodies: pure functions over JSON values ------------------
def detail(loc: list[Any], msg: str, kind: str, where: str = "body") -> dict[str, Any]:
    """Return one FastAPI-style validation problem, of the body or the `query`."""
    return {"loc": [where, *loc], "msg": msg, "type": kind}


def _decode(body: bytes) -> tuple[Any, list[dict[str, Any]]]:
    try:
        return json.loads(body), []
    except ValueError as e:
        return None, [detail([0], f"JSON decode error: {e}", "json_invalid")]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _image_problem(index: int, image: Any) -> dict[str, Any] | None:
    if not isinstance(image, str) or not image:
        return detail(["init_images", index], "Input should be a non-empty string", "string_type")
    raw = image.split(",", 1)[1] if image.startswith("data:") else image
    try:
        base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        return detail(["init_images", index], "Invalid base64 image", "value_error")
    return None


def validate(kind: str, payload: Any) -> list[dict[str, Any]]:
    """Return what is wrong with a txt2img/img2img payload (empty when it is acceptable)."""
    if not isinstance(payload, dict):
        return [detail([], "Input should be a valid dictionary", "dict_type")]
    problems = []
    for field, (low, high) in INT_LIMITS.items():
        value = payload.get(field, FIELD_DEFAULTS[field])
        if not _is_int(value):
            problems.append(detail([field], "Input should be a valid integer", "int_type"))
        elif not low <= value <= high:
            problems.append(detail([field], f"Input should be between {low} and {high}", "value_error"))
    for field in ("prompt", "negative_prompt", "sampler_name"):
        if field in payload and not isinstance(payload[field], str):
            problems.append(detail([field], "Input should be a valid string", "string_type"))
    strength = payload.get("denoising_strength")
    if strength is not None and (isinstance(strength, bool) or not isinstance(strength, (int, float))):
        problems.append(detail(["denoising_strength"], "Input should be a valid number", "float_type"))
    if not _is_int(payload.get("seed", -1)):
        problems.append(detail(["seed"], "Input should be a valid integer", "int_type"))
    if not isinstance(payload.get("override_settings") or {}, dict):
        problems.append(detail(["override_settings"], "Input should be a valid dictionary", "dict_type"))
    if kind == "img2img":
        images = payload.get("init_images")
        if not isinstance(images, list) or not images:
            problems.append(detail(["init_images"], "Field required: a non-empty list of images", "missing"))
        else:
            problems.extend(p for i, img in enumerate(images) if (p := _image_problem(i, img)))
    return problems


def find_model(checkpoint: str) -> dict[str, Any] | None:
    """Return the model a checkpoint title, file name or model name refers to."""
    for model in MODELS:
        if checkpoint in (model["title"], model["model_name"], model["filename"].rsplit("/", 1)[-1]):
            return model
    return None


def _seed_for(prompt: str, seed: int) -> int:
    if seed != -1:
        return seed
    return int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:4], "big")


def sampling_steps(kind: str, payload: dict[str, Any]) -> int:
    """Return the steps the sampler runs per batch: img2img only denoises its share of `steps`."""
    steps = payload.get("steps", FIELD_DEFAULTS["steps"])
    if kind != "img2img":
        return steps
    strength = payload.get("denoising_strength")
    strength = DENOISING_DEFAULT if strength is None else strength
    return int(min(max(strength, 0.0), 0.999) * steps) + 1


def _seeds(payload: dict[str, Any]) -> list[int]:
    count = payload.get("batch_size", FIELD_DEFAULTS["batch_size"]) * payload.get("n_iter", FIELD_DEFAULTS["n_iter"])
    seed = _seed_for(payload.get("prompt", ""), payload.get("seed", -1))
    return [seed + i for i in range(count)]


def batch_seed_texts(payload: dict[str, Any]) -> list[str]:
    """Return, per batch, what the pictures of its first image are drawn from."""
    size = payload.get("batch_size", FIELD_DEFAULTS["batch_size"])
    return [_picture_text(payload.get("prompt", ""), s, None) for s in _seeds(payload)[::size]]


def generation_reply(payload: dict[str, Any], current_checkpoint: str,
                     cut_short: Sequence[int | None] | None = None) -> dict[str, Any]:
    """Return the txt2img/img2img reply: images, the payload echoed, and the info JSON string.

    `cut_short` lists the batches sampled, each None when whole or the steps it got before an
    interrupt or skip; such a batch gives noisy pictures and later batches none (None: all whole).
    """
    def get(field: str) -> Any:
        return payload.get(field, FIELD_DEFAULTS.get(field))

    prompt, negative = payload.get("prompt", ""), payload.get("negative_prompt", "")
    checkpoint = (payload.get("override_settings") or {}).get("sd_model_checkpoint") or current_checkpoint
    model = find_model(checkpoint)
    model_name = model["model_name"] if model else checkpoint.split(" [")[0].rsplit(".", 1)[0]
    seeds = _seeds(payload)
    count, size = len(seeds), get("batch_size")
    batches = [None] * get("n_iter") if cut_short is None else list(cut_short)
    made = [(s, batches[i // size]) for i, s in enumerate(seeds) if i // size < len(batches)]
    images = [
        base64.b64encode(render_png(get("width"), get("height"), _picture_text(prompt, s, steps))).decode("ascii")
        for s, steps in made
    ]
    seed = seeds[0]
    # With no image made, the WebUI still describes the first one.
    described = [s for s, _ in made] or seeds[:1]
    info = {
        "prompt": prompt, "all_prompts": [prompt] * count,
        "negative_prompt": negative, "all_negative_prompts": [negative] * count,
        "seed": seed, "all_seeds": seeds, "subseed": seed, "all_subseeds": seeds,
        "width": get("width"), "height": get("height"), "steps": get("steps"),
        "cfg_scale": payload.get("cfg_scale", 7.0), "sampler_name": payload.get("sampler_name", "Euler a"),
        "batch_size": get("batch_size"), "styles": payload.get("styles", []),
        "sd_model_name": model_name, "sd_model_hash": model["hash"] if model else None,
        "denoising_strength": payload.get("denoising_strength"),
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "index_of_first_image": 0,
        "infotexts": [f"{prompt}\nSteps: {get('steps')}, Seed: {s}, Model: {model_name}" for s in described],
    }
    return {"images": images, "parameters": payload, "info": json.dumps(info)}


def _picture_text(prompt: str, seed: int, steps: int | None) -> str:
    return f"{prompt}|{seed}" if steps is None else f"{prompt}|{seed}|noisy after {steps} steps"


def progress_reply(state: WebUIState, now: float, skip_current_image: bool) -> dict[str, Any]:
    """Return the /sdapi/v1/progress body, computed the way the WebUI computes it."""
    if state.job_count == 0:
        return {"progress": 0.0, "eta_relative": 0.0, "state": state.dict(),
                "current_image": None, "textinfo": state.textinfo}
    progress = 0.01 + state.job_no / state.job_count  # the WebUI's 0.01 avoids dividing by zero
    if state.sampling_steps > 0:
        progress += state.sampling_step / state.sampling_steps / state.job_count
    elapsed = now - state.time_start
    return {"progress": min(progress, 1.0), "eta_relative": elapsed / progress - elapsed,
            "state": state.dict(), "current_image": None if skip_current_image else state.preview,
            "textinfo": state.textinfo}


def main(argv: list[str] | None = None) -> None:
    """Run one simulator until interrupted."""
    parser = command_line("Simulated AUTOMATIC1111 WebUI API (a test double).", 7860, "seconds per job")
    parser.add_argument("--per-step", type=float, default=None, help="seconds per sampling step, added")
    parser.add_argument("--auth", metavar="USER:PASS", help="require HTTP basic auth on /sdapi")
    parser.add_argument("--fail", type=int, metavar="N", help="answer 500 to the next N jobs (-1: all)")
    parser.add_argument("--die-after", type=int, metavar="N", help="stop listening after N jobs")
    parser.add_argument("--hang", action="store_true", help="hold every job until the process ends")
    args = parser.parse_args(argv)
    sim = SDWebUISimulator(args.latency, args.per_step, args.auth, args.host, args.port)
    if args.fail is not None:
        sim.fail(args.fail)
    if args.die_after is not None:
        sim.die_after(args.die_after)
    if args.hang:
        sim.hang()
    sim.start()
    serve_until_stopped(sim.stop, "SD WebUI simulator listening on %s%s", sim.url,
                        " (basic auth on /sdapi)" if args.auth else "")

if __name__ == "__main__":
    main()
