"""`flask export-study` and `flask import-study`: thin click wrappers of the study export functions."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import click
from flask import Blueprint
from flask.cli import with_appcontext

from apps.paint.sessions import HISTORY, PARTICIPANTS
from apps.records import COLLECTION as GENERATIONS
from core.db import get_db


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


def register(bp: Blueprint) -> None:
    """Add the study commands to the blueprint's command group."""
    bp.cli.add_command(export_study_command)
    bp.cli.add_command(import_study_command)
