"""Stable Diffusion options per pipeline and image kind, read from settings/sd_options.json.

The file has a `defaults` object and, per pipeline, one object per image kind (`scene`,
`product`) whose keys override the defaults. It is the only place the study's image
settings are stated: the WebUI client sends exactly these options and adds none. Keys are
AUTOMATIC1111 txt2img fields plus `checkpoint` and `style` (see agent.sd.build_payload);
they are checked at startup.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from agent.sd import build_payload
from apps.paint.pipelines.errors import SettingsError

FILE_NAME = "sd_options.json"
# The image kinds each pipeline draws; every one needs an entry in the file.
KINDS = {"rapid": ("scene",), "deep": ("scene",), "group_two": ("scene", "product")}
POSITIVE_INTS = ("width", "height", "steps")

SDOptions = dict[tuple[str, str], dict[str, Any]]


def _section(data: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = data.get(key)
    if not isinstance(value, dict):
        raise SettingsError(f"{where}: '{key}' must be an object")
    return value


def _check(options: dict[str, Any], where: str) -> None:
    """Raise SettingsError unless build_payload accepts `options` and the sizes make sense."""
    try:
        build_payload("startup check", "", options)
    except ValueError as e:
        raise SettingsError(f"{where}: {e}") from None
    for key in POSITIVE_INTS:
        value = options.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            raise SettingsError(f"{where}: '{key}' must be a positive integer, got {value!r}")


def load_sd_options(settings_dir: Path) -> SDOptions:
    """Return the merged options for each (pipeline, kind), or raise SettingsError."""
    file = Path(settings_dir) / FILE_NAME
    where = f"{Path(settings_dir).name}/{FILE_NAME}"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except OSError as e:
        raise SettingsError(f"{where}: cannot be read: {e}") from None
    except ValueError as e:
        raise SettingsError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise SettingsError(f"{where}: must be a JSON object")
    defaults = _section(data, "defaults", where)
    merged: SDOptions = {}
    for pipeline, kinds in KINDS.items():
        section = _section(data, pipeline, where)
        for kind in kinds:
            options = {**defaults, **_section(section, kind, f"{where} '{pipeline}'")}
            _check(options, f"{where} {pipeline}.{kind}")
            merged[(pipeline, kind)] = options
    return merged
