"""The request checks and reply bodies of the simulated AUTOMATIC1111 WebUI API (a test double).

Pure functions over JSON values: `simulators.sd_webui` owns the HTTP server, the queue
lock and the fault injection, this module only decides what a reply looks like.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from typing import Any

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
}
# The WebUI's own defaults for fields a request leaves out.
FIELD_DEFAULTS = {"width": 512, "height": 512, "steps": 20, "batch_size": 1, "n_iter": 1}
INT_LIMITS = {"width": (1, 4096), "height": (1, 4096), "steps": (1, 150), "batch_size": (1, 8), "n_iter": (1, 16)}


def detail(loc: list[Any], msg: str, kind: str) -> dict[str, Any]:
    """Return one FastAPI-style validation problem."""
    return {"loc": ["body", *loc], "msg": msg, "type": kind}


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


def generation_reply(payload: dict[str, Any], current_checkpoint: str) -> dict[str, Any]:
    """Return the txt2img/img2img reply: images, the payload echoed, and the info JSON string."""
    def get(field: str) -> Any:
        return payload.get(field, FIELD_DEFAULTS.get(field))

    prompt, negative = payload.get("prompt", ""), payload.get("negative_prompt", "")
    checkpoint = (payload.get("override_settings") or {}).get("sd_model_checkpoint") or current_checkpoint
    model = find_model(checkpoint)
    model_name = model["model_name"] if model else checkpoint.split(" [")[0].rsplit(".", 1)[0]
    count = get("batch_size") * get("n_iter")
    seed = _seed_for(prompt, payload.get("seed", -1))
    seeds = [seed + i for i in range(count)]
    images = [
        base64.b64encode(render_png(get("width"), get("height"), f"{prompt}|{s}")).decode("ascii")
        for s in seeds
    ]
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
        "infotexts": [f"{prompt}\nSteps: {get('steps')}, Seed: {s}, Model: {model_name}" for s in seeds],
    }
    return {"images": images, "parameters": payload, "info": json.dumps(info)}


def progress_reply(job: dict[str, Any] | None, queued: int) -> dict[str, Any]:
    """Return the /sdapi/v1/progress body for the running job (None when idle)."""
    state = {
        "skipped": False, "interrupted": False, "job": "", "job_count": queued,
        "job_timestamp": time.strftime("%Y%m%d%H%M%S"), "job_no": 0,
        "sampling_step": 0, "sampling_steps": 0,
    }
    progress = eta = 0.0
    if job is not None:
        elapsed = time.monotonic() - job["start"]
        progress = min(1.0, elapsed / job["duration"]) if job["duration"] > 0 else 1.0
        eta = max(0.0, job["duration"] - elapsed)
        state.update(job=f"job({job['kind']})", sampling_steps=job["steps"],
                     sampling_step=int(progress * job["steps"]))
    return {"progress": progress, "eta_relative": eta, "state": state,
            "current_image": None, "textinfo": None}
