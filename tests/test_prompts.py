"""The prompt templates and SD options under settings/, and their startup check."""
from __future__ import annotations

import json
import re
import logging
import shutil
from pathlib import Path

import pytest

from apps.paint.pipelines import SETTINGS_DIR, PaintApp
from apps.paint.pipelines.settings import SPECS, Limits, SettingsError, TemplateCheckError, stated_count

# Steps whose answer feeds Stable Diffusion: they must ask for English keywords.
ENGLISH = {"rapid/sd_prompts", "deep/sd_prompts", "group_two/scene_prompts", "group_two/product_prompts"}


@pytest.fixture
def settings(tmp_path: Path) -> Path:
    """A copy of settings/ that a test may break."""
    return Path(shutil.copytree(SETTINGS_DIR, tmp_path / "settings"))


def edit(settings: Path, name: str, old: str, new: str) -> None:
    file = settings / f"{name}.j2"
    text = file.read_text(encoding="utf-8")
    assert old in text, f"{old!r} not in {name}"
    file.write_text(text.replace(old, new), encoding="utf-8")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_every_template_renders_with_its_sample(paint, name):
    spec = SPECS[name]
    text = paint.book.render(name, **spec.sample)
    assert text and "{{" not in text and "{%" not in text
    if spec.counted:
        assert stated_count(text) == spec.sample["count"]
        if spec.sample["count"] > 1:
            assert "#" in text and "不要编号" in text
        # The simulator (and the model) answer in English only when asked to.
        assert ("英文" in text) == (name in ENGLISH) and "English" not in text


def test_list_templates_show_every_input_item(paint):
    text = paint.book.render("rapid/sd_prompts", **SPECS["rapid/sd_prompts"].sample)
    for pair in SPECS["rapid/sd_prompts"].sample["items"]:
        assert pair["product"] in text and pair["scene"] in text
    select = paint.book.render("naming/select", **SPECS["naming/select"].sample)
    assert "\n候选：折叠计数训练凳#夜行发光护膝\n" in select


def test_sd_prompts_add_the_study_suffix_and_exclusions(paint):
    scene = paint.book.render("sd/scene_positive", keywords="folding bench, park")
    product = paint.book.render("sd/product_positive", keywords="folding bench")
    assert scene.startswith("folding bench, park, ") and "photorealistic" in scene and "minimal" in scene
    assert "white background" in product and "industrial design" in product
    negative = paint.book.render("sd/scene_negative")
    for word in ("people", "text", "watermark", "low quality", "cartoon"):
        assert word in negative
    assert paint.book.render("sd/product_negative").startswith(negative)


def test_sd_options_are_the_study_defaults(paint):
    for options in paint.sd_options.values():
        assert options["checkpoint"] == "sd_xl_base_1.0.safetensors"
        assert (options["width"], options["height"], options["cfg_scale"], options["steps"]) == (1024, 576, 5, 30)
        assert (options["sampler_name"], options["style"]) == ("DPM++ 2M SDE Karras", "photographic")
    assert set(paint.sd_options) == {("rapid", "scene"), ("deep", "scene"), ("group_two", "scene"),
                                   ("group_two", "product")}


def test_misspelt_variable_stops_startup_naming_template_and_variable(settings):
    edit(settings, "rapid/products", "{{ task }}", "{{ tsak }}")
    with pytest.raises(TemplateCheckError) as caught:
        PaintApp(settings)
    message = str(caught.value)
    assert "settings/rapid/products.j2" in message and "'tsak'" in message
    assert "this template gets: count, task" in message


def test_misspelt_attribute_is_caught_by_the_sample_render(settings):
    edit(settings, "rapid/sd_prompts", "item.scene", "item.scnee")
    with pytest.raises(TemplateCheckError, match=r"settings/rapid/sd_prompts\.j2: fails to render.*scnee"):
        PaintApp(settings)


def test_typo_in_a_branch_that_samples_skip_is_still_caught(settings):
    edit(settings, "deep/identify", "{% if texts %}", "{% if texts %}{% if false %}{{ txets }}{% endif %}")
    with pytest.raises(TemplateCheckError, match=r"deep/identify\.j2: unknown variable 'txets'"):
        PaintApp(settings)


def test_every_problem_is_listed_at_once(settings):
    edit(settings, "rapid/products", "{{ task }}", "{{ tsak }}")
    edit(settings, "naming/select", "{% for scheme in schemes %}", "{% for scheme in schemes %")
    (settings / "group_two" / "concretes.j2").unlink()
    edit(settings, "deep/concretes", "共 {{ count }} 项", "共三项")
    with pytest.raises(TemplateCheckError) as caught:
        PaintApp(settings)
    message = str(caught.value)
    assert "rapid/products.j2: unknown variable 'tsak'" in message
    assert re.search(r"naming/select\.j2, line \d+: syntax error", message)
    assert "group_two/concretes.j2: missing" in message
    assert "deep/concretes.j2: must end its request with '共 {{ count }} 项'" in message


def test_unused_template_is_only_a_warning(settings, caplog):
    (settings / "rapid" / "spare.j2").write_text("{{ whatever }}", encoding="utf-8")
    with caplog.at_level(logging.WARNING):
        PaintApp(settings)
    assert "settings/rapid/spare.j2 is not used" in caplog.text


@pytest.mark.parametrize("change, message", [
    (lambda o: o["defaults"].update(Model="sdxl"), r"defaults|rapid\.scene: unknown Stable Diffusion option 'Model'"),
    (lambda o: o["group_two"].pop("product"), r"'group_two': 'product' must be an object"),
    (lambda o: o["deep"]["scene"].update(width="wide"), r"deep\.scene: 'width' must be a positive integer"),
    (lambda o: o["rapid"]["scene"].update(steps=0), r"rapid\.scene: 'steps' must be a positive integer"),
    (lambda o: o.pop("defaults"), r"'defaults' must be an object"),
])
def test_bad_sd_options_stop_startup(settings, change, message):
    file = settings / "sd_options.json"
    options = json.loads(file.read_text(encoding="utf-8"))
    change(options)
    file.write_text(json.dumps(options), encoding="utf-8")
    with pytest.raises(SettingsError, match=message):
        PaintApp(settings)


def test_sd_options_that_are_not_json_stop_startup(settings):
    (settings / "sd_options.json").write_text("{width: 1024", encoding="utf-8")
    with pytest.raises(SettingsError, match=r"settings/sd_options\.json: not valid JSON"):
        PaintApp(settings)


def test_each_step_checks_the_lengths_its_template_states(paint):
    limits = paint.book.limits
    assert limits["rapid/products"] == Limits(chars=(None, 12))
    assert limits["rapid/scenes"].chars == (20, 40) and limits["naming/names"].chars == (5, 8)
    assert limits["deep/concretes"] == Limits(chars=(20, 50), features=3)
    assert limits["group_two/product_prompts"] == Limits(keywords=(8, 15))


def test_a_template_that_stops_stating_a_checked_length_stops_startup(settings):
    edit(settings, "rapid/scenes", "20 到 40 字", "二十到四十个字")
    edit(settings, "deep/sd_prompts", "8 到 15 个", "若干个")
    with pytest.raises(TemplateCheckError) as caught:
        PaintApp(settings)
    message = str(caught.value)
    assert "settings/rapid/scenes.j2: its step checks the chars of each item" in message
    assert "settings/deep/sd_prompts.j2: its step checks the keywords of each item" in message
