"""The layout of a study export, written to (or read from) a folder or a zip file.

    manifest.json          what was exported, counts, and every blob's file and content type
    sessions.csv           one row per participant (current state)
    saves.csv              one row per save in the history
    schemes.csv            one row per distinct scheme, with the files of its moved values
    generations.csv        one row per generation record
    records/<name>.jsonl   the documents as stored, one per line (core.json_codec.dumps_document)
    blobs/<sha256>.<ext>   every image and blob, named by its hash (old-format sessions' inline images too)
"""
from __future__ import annotations

import io
import mimetypes
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from apps.paint.scheme_store import SCHEMES
from apps.paint.sessions import HISTORY, PARTICIPANTS
from apps.records import COLLECTION as GENERATIONS

FORMAT = "refinity-study-export"
VERSION = 1
MANIFEST = "manifest.json"
# Collections in the order an import writes them: what is pointed at before what points.
RECORDS = (SCHEMES, GENERATIONS, HISTORY, PARTICIPANTS)
_EXTENSIONS = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "image/svg+xml": ".svg",
               "application/json": ".json", "text/plain": ".txt", "application/octet-stream": ".bin"}


def record_path(collection: str) -> str:
    """Return where the documents of `collection` are kept in an export."""
    return f"records/{collection}.jsonl"


def blob_path(key: str, content_type: str) -> str:
    """Return the file name of a blob: its hash and an extension from its content type."""
    mime = content_type.split(";", 1)[0].strip().lower()
    extension = _EXTENSIONS.get(mime) or mimetypes.guess_extension(mime) or ".bin"
    return f"blobs/{key}{extension}"


class ExportWriter:
    """Files of an export, in a new folder or a new zip file."""

    def __init__(self, target: Path, as_zip: bool) -> None:
        self.target = target
        self._zip = zipfile.ZipFile(target, "x", allowZip64=True) if as_zip else None
        if self._zip is None:
            target.mkdir(parents=True, exist_ok=True)
            if any(target.iterdir()):
                raise FileExistsError(f"{target} is not empty")

    @contextmanager
    def text(self, name: str) -> Iterator[IO[str]]:
        """Open the text file `name` for writing."""
        if self._zip is not None:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            with self._zip.open(info, "w", force_zip64=True) as raw, io.TextIOWrapper(raw, "utf-8", newline="") as out:
                yield out
            return
        path = self.target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="") as out:
            yield out

    def binary(self, name: str, data: bytes) -> None:
        """Write the file `name` with `data`, stored as is (images are compressed already)."""
        if self._zip is not None:
            self._zip.writestr(zipfile.ZipInfo(name), data, compress_type=zipfile.ZIP_STORED)
            return
        path = self.target / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def close(self) -> None:
        """Finish the export (the zip's directory is written here)."""
        if self._zip is not None:
            self._zip.close()


class ExportReader:
    """Files of an export, from a folder or a zip file."""

    def __init__(self, source: Path) -> None:
        self._zip = zipfile.ZipFile(source) if source.is_file() else None
        self.source = source

    def exists(self, name: str) -> bool:
        """Return whether the export holds the file `name`."""
        if self._zip is not None:
            return name in self._zip.NameToInfo
        return (self.source / name).is_file()

    @contextmanager
    def text(self, name: str) -> Iterator[IO[str]]:
        """Open the text file `name` for reading."""
        if self._zip is not None:
            with self._zip.open(name) as raw, io.TextIOWrapper(raw, "utf-8") as lines:
                yield lines
            return
        with (self.source / name).open(encoding="utf-8") as lines:
            yield lines

    def binary(self, name: str) -> bytes:
        """Return the bytes of the file `name`."""
        if self._zip is not None:
            return self._zip.read(name)
        return (self.source / name).read_bytes()

    def close(self) -> None:
        """Close the zip file, if any."""
        if self._zip is not None:
            self._zip.close()
