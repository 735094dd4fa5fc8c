"""The prompt templates under settings/: loaded once, checked at startup, rendered per step.

Templates are Jinja files named after their step (`rapid/products` is
settings/rapid/products.j2). Undefined variables are errors (StrictUndefined), and
`PromptBook` renders every template with sample variables when it is built, so a typo
in a variable name stops the server at startup instead of failing a participant later.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jinja2
from jinja2 import meta

from apps.paint.pipelines.errors import TemplateCheckError
from apps.paint.pipelines.template_specs import SPECS, TemplateSpec

log = logging.getLogger(__name__)

SUFFIX = ".j2"
COUNT = re.compile(r"共\s*(\d+)\s*项")


def stated_count(text: str) -> int | None:
    """Return N of the last `共 N 项` in `text`, or None when there is none."""
    found = COUNT.findall(text)
    return int(found[-1]) if found else None


class PromptBook:
    """The checked templates of one settings directory."""

    def __init__(self, settings_dir: Path, specs: Mapping[str, TemplateSpec] = SPECS) -> None:
        self.settings_dir = Path(settings_dir)
        self.specs = dict(specs)
        self._env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(str(self.settings_dir)),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # plain-text prompts, never HTML
            trim_blocks=True,
            lstrip_blocks=True,
            keep_trailing_newline=False,
        )
        problems = [problem for name in self.specs if (problem := self._check(name))]
        if problems:
            raise TemplateCheckError("prompt templates failed the startup check:\n  "
                                     + "\n  ".join(problems))
        self._warn_unused()

    def render(self, name: str, **variables: Any) -> str:
        """Return template `name` rendered with `variables`, without surrounding whitespace."""
        return self._env.get_template(name + SUFFIX).render(**variables).strip()

    def path(self, name: str) -> str:
        """Return the template's file name relative to the settings directory's parent."""
        return f"{self.settings_dir.name}/{name}{SUFFIX}"

    def _check(self, name: str) -> str | None:
        """Return what is wrong with template `name`, or None."""
        where, spec = self.path(name), self.specs[name]
        file = self.settings_dir / (name + SUFFIX)
        if not file.is_file():
            return f"{where}: missing (every pipeline step needs its template)"
        try:
            source = file.read_text(encoding="utf-8")
            parsed = self._env.parse(source, name=name + SUFFIX)
        except (OSError, UnicodeDecodeError) as e:
            return f"{where}: cannot be read: {e}"
        except jinja2.TemplateSyntaxError as e:
            return f"{where}, line {e.lineno}: syntax error: {e.message}"
        unknown = sorted(meta.find_undeclared_variables(parsed) - set(spec.sample))
        if unknown:
            return (f"{where}: unknown variable {', '.join(repr(v) for v in unknown)} "
                    f"(this template gets: {', '.join(sorted(spec.sample)) or 'no variables'})")
        try:
            text = self.render(name, **spec.sample)
        except jinja2.TemplateError as e:  # e.g. an attribute typo: `item.prodcut`
            return f"{where}: fails to render with sample variables: {e}"
        except Exception as e:  # a filter applied to the wrong type, and the like
            return f"{where}: fails to render with sample variables: {type(e).__name__}: {e}"
        if not text:
            return f"{where}: renders to an empty prompt"
        if spec.counted and stated_count(text) != spec.sample["count"]:
            return (f"{where}: must end its request with '共 {{{{ count }}}} 项' "
                    "(the last '共 N 项' tells the model, the parser and the simulator how many items)")
        return None

    def _warn_unused(self) -> None:
        for file in sorted(self.settings_dir.rglob("*" + SUFFIX)):
            name = file.relative_to(self.settings_dir).with_suffix("").as_posix()
            if name not in self.specs:
                log.warning("template %s is not used by any pipeline step", self.path(name))
