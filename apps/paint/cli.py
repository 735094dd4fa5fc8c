"""The researchers' commands: `flask export-study` and `flask import-study`, thin click wrappers of
the study export functions, `flask attribute-generations`, and `flask participants add|remove|list`
for the participant register."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import click
from flask import Blueprint, current_app
from flask.cli import AppGroup, with_appcontext
from pymongo.database import Database

from apps.paint import register as participant_register
from apps.paint.sessions import HISTORY, PARTICIPANTS
from apps.records import COLLECTION as GENERATIONS
from core.db import get_db
from core.envelope import BadInput


def _bar(label: str):
    def progress(keys: Sequence[str]):
        return click.progressbar(keys, label=label, show_pos=True)
    return progress


@click.command("export-study")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--username", help="Export only this participant (default: everyone).")
@click.option("--zip", "as_zip", is_flag=True, help="Write one zip file instead of a folder.")
@with_appcontext
def export_study_command(out: Path, username: str | None, as_zip: bool) -> None:
    """Export sessions, every save, generation records and all images to OUT for analysis."""
    from apps.paint.study_export import StudyExportError, export_study

    try:
        manifest = export_study(get_db(), out, username=username, as_zip=as_zip, progress=_bar("blobs"))
    except (StudyExportError, FileExistsError) as error:
        raise click.ClickException(str(error)) from None
    counts = manifest["counts"]
    click.echo(f"exported {counts[PARTICIPANTS]} participants, {counts[HISTORY]} saves, "
               f"{counts[GENERATIONS]} generations and {counts['blobs']} blobs to {out}")


@click.command("import-study")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.option("--force", is_flag=True, help="Import even if the database already holds study data.")
@with_appcontext
def import_study_command(source: Path, force: bool) -> None:
    """Restore a study export (folder or zip) into the configured database."""
    from apps.paint.study_import import StudyImportError, import_study

    try:
        written = import_study(get_db(), source, force=force, progress=_bar("blobs"))
    except StudyImportError as error:
        raise click.ClickException(str(error)) from None
    click.echo("imported " + ", ".join(f"{count} {name}" for name, count in written.items()))


@click.command("attribute-generations")
@with_appcontext
def attribute_generations_command() -> None:
    """Mark what every stored save shows of its participant, then attribute every generation again.

    For data from before attribution, or imported: generations a username or a researcher
    decided are left as they are.
    """
    from apps.paint.sessions import mark_history
    from apps.records import reattribute_all

    db = get_db()
    marked = mark_history(db)
    click.echo(f"marked the saves of {marked} participants; {reattribute_all(db)} generations changed attribution")


# An AppGroup runs each of its commands inside the app's context.
participants_group = AppGroup("participants", help="Keep the register of who may take part (enforced while "
                              "PARTICIPANT_REGISTER is on).")
NAMES = click.argument("names", nargs=-1, required=True)


def _unless_enforced() -> None:
    if not current_app.config["PARTICIPANT_REGISTER"]:
        click.echo("note: PARTICIPANT_REGISTER is off, so any username may take part; set "
                   "PARTICIPANT_REGISTER=1 to admit only these", err=True)


def _change(change: Callable[[Database, tuple[str, ...]], list[str]], names: tuple[str, ...], said: str) -> None:
    """Apply `change` to the register and say which names it changed (`said` takes their count)."""
    try:
        changed = change(get_db(), names)
    except BadInput as error:
        raise click.ClickException(error.message) from None
    click.echo(said.format(len(changed)) + (f": {', '.join(changed)}" if changed else ""))


@participants_group.command("add")
@NAMES
def add_participants_command(names: tuple[str, ...]) -> None:
    """Register NAMES, spelt as the API reads them (no surrounding whitespace, NFC)."""
    _change(participant_register.add, names, "registered {} new name(s)")
    _unless_enforced()


@participants_group.command("remove")
@NAMES
def remove_participants_command(names: tuple[str, ...]) -> None:
    """Take NAMES out of the register; their sessions stay, but they can no longer take part."""
    _change(participant_register.remove, names, "removed {} name(s)")


@participants_group.command("list")
def list_participants_command() -> None:
    """Print every registered name, one per line."""
    for name in participant_register.names(get_db()):
        click.echo(name)
    _unless_enforced()


def register(bp: Blueprint) -> None:
    """Add the researchers' commands to the blueprint's command group."""
    bp.cli.add_command(export_study_command)
    bp.cli.add_command(import_study_command)
    bp.cli.add_command(attribute_generations_command)
    bp.cli.add_command(participants_group)
