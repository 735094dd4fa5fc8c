"""Stable Diffusion request bodies: the study's defaults and the fields the WebUI knows.

`build_payload` is re-exported by `agent.sd`; callers speak the AUTOMATIC1111 field names,
plus two shorthands: `checkpoint` (sent as override_settings.sd_model_checkpoint, the only
place the WebUI reads it) and `style` (sent as `styles: [style]`).
"""
from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

STUDY_CHECKPOINT = "sd_xl_base_1.0.safetensors"

# The generation settings of the design study (see API-CONTRACT.md, last section).
STUDY_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    "checkpoint": STUDY_CHECKPOINT,
    "width": 1024,
    "height": 576,
    "cfg_scale": 5,
    "steps": 30,
    "sampler_name": "DPM++ 2M SDE Karras",
    "styles": ["photographic"],
    "n_iter": 1,
    "batch_size": 1,
    "seed": -1,
})

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
# Extra fields img2img accepts besides the shared ones.
IMG2IMG_FIELDS = frozenset({
    "resize_mode", "image_cfg_scale", "mask", "mask_blur", "mask_blur_x", "mask_blur_y",
    "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert",
    "initial_noise_multiplier", "latent_mask", "include_init_images",
})


def _check_key(key: str, img2img: bool) -> None:
    if key in TXT2IMG_FIELDS or (img2img and key in IMG2IMG_FIELDS):
        return
    if key == "Model":
        raise ValueError("unknown Stable Diffusion option 'Model': the WebUI ignores it, use 'checkpoint'")
    if key in ("prompt", "negative_prompt", "init_images"):
        raise ValueError(f"Stable Diffusion option {key!r} is an argument of build_payload, not an option")
    raise ValueError(f"unknown Stable Diffusion option {key!r}: use an AUTOMATIC1111 txt2img field name")


def build_payload(prompt: str, negative_prompt: str = "", options: Mapping[str, Any] | None = None,
                  *, init_images: Sequence[str] | None = None) -> dict[str, Any]:
    """Return a txt2img payload (img2img when `init_images` is given): study defaults, then `options`."""
    img2img = init_images is not None
    merged = copy.deepcopy(dict(STUDY_DEFAULTS))
    for key, value in (options or {}).items():
        if key == "checkpoint":
            merged["checkpoint"] = value
        elif key == "style":
            merged["styles"] = [value] if value else []
        else:
            _check_key(key, img2img)
            merged[key] = copy.deepcopy(value)
    checkpoint = merged.pop("checkpoint", None)
    override = dict(merged.pop("override_settings", None) or {})
    if checkpoint:
        # The WebUI switches models only through override_settings; explicit overrides win.
        override = {"sd_model_checkpoint": checkpoint, **override}
    payload = {"prompt": prompt, "negative_prompt": negative_prompt, **merged}
    if override:
        payload["override_settings"] = override
    if img2img:
        payload["init_images"] = list(init_images)
    return payload
