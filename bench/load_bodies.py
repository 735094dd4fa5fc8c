"""Request bodies of the load benchmark, shaped like the web client's (API-CONTRACT.md).

Sketch images are PNG data URIs of 50-100 KB: a PNG signature followed by random bytes,
so nothing compresses them and every changed sketch is new data for the store (the
server only checks the signature, never the pixels). A participant's save body is kept
as pre-encoded scheme fragments, so building the next body costs the client one new
image and a join, not a JSON encoding of the whole session.
"""
from __future__ import annotations

import base64
import json
import random
from typing import Any

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TASKS = ["设计一款运动辅助产品", "设计一款帮助老年人独立出行的产品", "设计一款家用节水装置",
         "设计一款适合小户型的收纳家具", "设计一款儿童安全出行产品"]
NOTES = [["可折叠", "带计数"], ["轻便", "太阳能充电"], ["防滑", "语音提醒"],
         ["模块化", "可单手操作"], ["低成本", "易清洁"]]


def png_data_uri(rng: random.Random, min_kb: int = 50, max_kb: int = 100) -> str:
    """Return a data URI of a PNG-signed, incompressible image of min_kb..max_kb KB."""
    size = rng.randint(min_kb * 1024, max_kb * 1024)
    data = PNG_SIGNATURE + rng.randbytes(size - len(PNG_SIGNATURE))
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def scheme(rng: random.Random, index: int) -> dict[str, Any]:
    """Return one sketch as the client's canvas produces it: SVG, PNG, strokes and notes."""
    points = [{"x": round(rng.uniform(0, 800), 1), "y": round(rng.uniform(0, 600), 1)} for _ in range(60)]
    notes = NOTES[index % len(NOTES)]
    return {"name": f"方案{index}", "canvasSvg": f'<svg xmlns="http://www.w3.org/2000/svg"><path d="M{index} 0L80 60"/></svg>',
            "canvasImage": png_data_uri(rng),
            "paths": [{"drawMode": True, "strokeColor": "#000", "strokeWidth": 5, "paths": points}],
            "texts": [{"text": text, "position": {"x": 10 * i, "y": 20}} for i, text in enumerate(notes)]}


def _fragment(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# The stage map around the rapid-divergence list, pre-encoded once.
RAPID = "快速发散"
_RAPID_OPEN = _fragment("准备") + b":null," + _fragment(RAPID) + b":["
_AFTER_RAPID = _fragment({"深入发散": [], "收敛": [], "完成": None, "禁止": None})[1:-1]


class Participant:
    """One simulated participant: a few sketches, one of them redrawn before every save."""

    def __init__(self, username: str, seed: int, schemes: int = 4) -> None:
        self.username = username
        self.rng = random.Random(seed)
        self.task = self.rng.choice(TASKS)
        self.drawn = schemes
        self.fragments = [_fragment(scheme(self.rng, i)) for i in range(schemes)]
        self.saves = 0

    def start_body(self) -> bytes:
        """Return the /paint/start body."""
        return _fragment({"username": self.username})

    def next_save(self) -> bytes:
        """Redraw one sketch (round robin) and return the whole-state /paint/save body."""
        slot = self.saves % len(self.fragments)
        self.fragments[slot] = _fragment(scheme(self.rng, self.drawn))
        self.drawn += 1
        self.saves += 1
        return self.save_body()

    def save_body(self) -> bytes:
        """Return the /paint/save body of the current sketches (all in the rapid stage)."""
        head = b'{"username":' + _fragment(self.username) + b',"data":{"designSchemes":{' + _RAPID_OPEN
        tail = b"]," + _AFTER_RAPID + b'},"designTask":' + _fragment(self.task) + b',"currentStage":' + _fragment(RAPID) + b"}}"
        return head + b",".join(self.fragments) + tail

    def schemes(self) -> list[Any]:
        """Return the sketches of the last body, decoded, to compare with what the server loads."""
        return [json.loads(fragment) for fragment in self.fragments]


def generation_body(client: int, round_: int) -> tuple[dict[str, Any], int]:
    """Return a /generate body for `client` (types 0, 1, 3 in turn) and the creatives it must give."""
    rng = random.Random(client * 1000 + round_)
    task = TASKS[(client + round_) % len(TASKS)]
    notes = NOTES[(client + round_) % len(NOTES)]
    kind = (0, 1, 3)[client % 3]
    if kind == 0:  # the client asks for 6 ideas when the task is set
        return {"appid": 0, "type": 0, "username": f"gen-{client}", "prompts": {"task": task, "num": 6}}, 6
    if kind == 1:  # one request per rapid sketch, with the sketch itself
        prompts = {"designTask": task, "designTexts": notes, "designImage": png_data_uri(rng), "schemeId": round_}
        return {"appid": 0, "type": 1, "username": f"gen-{client}", "prompts": prompts}, 3
    prompts = {"selectedSchemes": [{"designTexts": notes}], "num": 3}  # one scheme: 3 stimuli
    return {"appid": 0, "type": 3, "username": f"gen-{client}", "prompts": prompts}, 3
