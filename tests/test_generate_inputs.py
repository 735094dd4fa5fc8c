"""The checks of /generate prompts: every bad input is a BadInput naming its field."""
from __future__ import annotations

import base64
import copy

import pytest

from apps.paint.pipelines import PaintApp
from core.envelope import BadInput
from core.image_store import Image
from tests.helpers import PNG_1PX

PNG = f"data:image/png;base64,{PNG_1PX}"
JPEG = "data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff\xe0 jpeg bytes").decode()
WEBP_RAW = base64.b64encode(b"RIFF\x00\x00\x00\x00WEBPVP8 ").decode()
GIF = "data:image/gif;base64," + base64.b64encode(b"GIF89a tiny").decode()

GOOD = {
    0: {"task": "设计一款运动辅助产品", "num": 6},
    1: {"designTask": "设计一款运动辅助产品", "designTexts": ["可折叠"], "designImage": PNG, "schemeId": 2},
    2: {"designTask": "t", "selectNum": 2,
        "schemes": [{"designTexts": ["a"], "designImage": PNG}, {"designTexts": [], "designImage": JPEG}]},
    3: {"selectedSchemes": [{"designTexts": ["a", "b"]}], "num": 3},
}


def with_change(type_: int, path: tuple, value: object) -> dict:
    """Return GOOD[type_] with the value at `path` replaced (or deleted when value is DELETE)."""
    prompts = copy.deepcopy(GOOD[type_])
    target = prompts
    for key in path[:-1]:
        target = target[key]
    if value is DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return prompts


DELETE = object()
LONG = "长" * 501

BAD = [
    # type 0
    (0, ("task",), DELETE, "prompts.task"),
    (0, ("task",), None, "prompts.task"),
    (0, ("task",), 5, "prompts.task"),
    (0, ("task",), "   ", "prompts.task"),
    (0, ("task",), LONG, "prompts.task"),
    (0, ("num",), DELETE, "prompts.num"),
    (0, ("num",), 0, "prompts.num"),
    (0, ("num",), 13, "prompts.num"),
    (0, ("num",), -1, "prompts.num"),
    (0, ("num",), True, "prompts.num"),
    (0, ("num",), 6.0, "prompts.num"),
    (0, ("num",), "6", "prompts.num"),
    (0, ("num",), 10**30, "prompts.num"),
    # type 1
    (1, ("designTask",), DELETE, "prompts.designTask"),
    (1, ("designTask",), ["x"], "prompts.designTask"),
    (1, ("designTask",), LONG, "prompts.designTask"),
    (1, ("designTexts",), DELETE, "prompts.designTexts"),
    (1, ("designTexts",), "可折叠", "prompts.designTexts"),
    (1, ("designTexts",), ["x"] * 21, "prompts.designTexts"),
    (1, ("designTexts", 0), 7, "prompts.designTexts[0]"),
    (1, ("designTexts", 0), "字" * 201, "prompts.designTexts[0]"),
    (1, ("designImage",), DELETE, "prompts.designImage"),
    (1, ("designImage",), "", "prompts.designImage"),
    (1, ("designImage",), 12, "prompts.designImage"),
    (1, ("designImage",), "data:image/png;base64,%%%", "prompts.designImage"),
    (1, ("designImage",), "data:image/png,rawtext", "prompts.designImage"),
    (1, ("designImage",), GIF, "prompts.designImage"),
    (1, ("designImage",), base64.b64encode(b"hello").decode(), "prompts.designImage"),
    (1, ("schemeId",), DELETE, "prompts.schemeId"),
    (1, ("schemeId",), 1.5, "prompts.schemeId"),
    (1, ("schemeId",), True, "prompts.schemeId"),
    (1, ("schemeId",), {"id": 1}, "prompts.schemeId"),
    (1, ("schemeId",), "x" * 101, "prompts.schemeId"),
    (1, ("schemeId",), 2**63, "prompts.schemeId"),
    # type 2
    (2, ("selectNum",), DELETE, "prompts.selectNum"),
    (2, ("selectNum",), 0, "prompts.selectNum"),
    (2, ("selectNum",), 13, "prompts.selectNum"),
    (2, ("selectNum",), False, "prompts.selectNum"),
    (2, ("designTask",), 3, "prompts.designTask"),
    (2, ("schemes",), DELETE, "prompts.schemes"),
    (2, ("schemes",), [], "prompts.schemes"),
    (2, ("schemes",), {"0": {}}, "prompts.schemes"),
    (2, ("schemes",), [{"designTexts": [], "designImage": PNG}] * 13, "prompts.schemes"),
    (2, ("schemes", 1), "scheme", "prompts.schemes[1]"),
    (2, ("schemes", 1, "designImage"), DELETE, "prompts.schemes[1].designImage"),
    (2, ("schemes", 1, "designImage"), "data:image/png;base64,AAAA", "prompts.schemes[1].designImage"),
    (2, ("schemes", 0, "designTexts"), DELETE, "prompts.schemes[0].designTexts"),
    (2, ("schemes", 0, "designTexts"), [None], "prompts.schemes[0].designTexts[0]"),
    # type 3
    (3, ("selectedSchemes",), DELETE, "prompts.selectedSchemes"),
    (3, ("selectedSchemes",), [], "prompts.selectedSchemes"),
    (3, ("selectedSchemes",), [{"designTexts": []}] * 13, "prompts.selectedSchemes"),
    (3, ("selectedSchemes", 0), ["a"], "prompts.selectedSchemes[0]"),
    (3, ("selectedSchemes", 0, "designTexts"), DELETE, "prompts.selectedSchemes[0].designTexts"),
    (3, ("selectedSchemes", 0, "designTexts", 1), "字" * 201, "prompts.selectedSchemes[0].designTexts[1]"),
    (3, ("num",), DELETE, "prompts.num"),
    (3, ("num",), 0, "prompts.num"),
    (3, ("num",), "3", "prompts.num"),
]


@pytest.mark.parametrize("type_, path, value, field", BAD)
def test_bad_prompts_name_the_field(paint, type_, path, value, field):
    with pytest.raises(BadInput) as caught:
        paint.read(type_, with_change(type_, path, value))
    assert caught.value.field == field and caught.value.status == 400
    assert caught.value.message.startswith(f"{field}: ")


def test_too_many_group_two_stimuli_in_all():
    prompts = {"selectedSchemes": [{"designTexts": ["a"]}] * 5, "num": 3}
    with pytest.raises(BadInput, match=r"prompts\.num: asks for 15 stimuli"):
        PaintApp().read(3, prompts)


@pytest.mark.parametrize("type_", [-1, 4, 99, True, "0", None, 1.0, [0]])
def test_unknown_type(make_app, type_):
    response = make_app().test_client().post("/generate", json={"appid": 0, "type": type_, "prompts": GOOD[0]})
    assert response.status_code == 400 and response.get_json()["message"].startswith("type: ")


@pytest.mark.parametrize("prompts", [None, [], "task", 5])
@pytest.mark.parametrize("type_", sorted(GOOD))
def test_prompts_must_be_an_object(paint, type_, prompts):
    with pytest.raises(BadInput) as caught:
        paint.read(type_, prompts)
    assert caught.value.field == "prompts"


@pytest.mark.parametrize("type_", sorted(GOOD))
@pytest.mark.parametrize("junk", [None, True, 0, -5, 1e308, "", "x" * 1000, [], [None], {}, {"$x": 1}])
def test_junk_in_any_field_is_bad_input_never_a_crash(paint, type_, junk):
    for key in GOOD[type_]:
        try:
            paint.read(type_, with_change(type_, (key,), junk))
        except BadInput as e:
            assert e.field.startswith(f"prompts.{key}")


def test_good_prompts_give_models_that_dump_as_the_client_spelled_them(paint):
    rapid = paint.read(0, GOOD[0])
    assert (rapid.task, rapid.num) == ("设计一款运动辅助产品", 6)
    assert rapid.model_dump(by_alias=True) == GOOD[0]
    deep = paint.read(1, GOOD[1])
    assert isinstance(deep.design_image, Image) and deep.design_image.content_type == "image/png"
    assert deep.model_dump(by_alias=True, exclude={"design_image"}) == \
        {"designTask": "设计一款运动辅助产品", "designTexts": ["可折叠"], "schemeId": 2}
    assert deep.model_dump(by_alias=True)["designImage"] == PNG_1PX  # images dump as raw base64
    naming = paint.read(2, GOOD[2])
    assert [s.design_image.content_type for s in naming.schemes] == ["image/png", "image/jpeg"]
    assert paint.read(3, GOOD[3]).model_dump(by_alias=True) == GOOD[3]


@pytest.mark.parametrize("scheme_id", [0, -3, 2**62, "", "方案-7"])
def test_scheme_id_is_kept_as_given(paint, scheme_id):
    request = paint.read(1, with_change(1, ("schemeId",), scheme_id))
    assert request.scheme_id == scheme_id


def test_raw_base64_webp_and_empty_design_task_are_accepted(paint):
    request = paint.read(1, with_change(1, ("designImage",), WEBP_RAW) | {"designTask": ""})
    assert request.design_image.content_type == "image/webp" and request.design_task == ""


def test_extra_keys_are_ignored(paint):
    assert paint.read(0, GOOD[0] | {"color": "red"}).num == 6
