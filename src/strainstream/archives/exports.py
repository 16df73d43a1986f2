"""Bluesky document exports: ``[name, doc]`` pairs in msgpack or JSON-lines files.

suitcase-msgpack and suitcase-jsonl write one file per run (``<uid>.msgpack``,
``<uid>.jsonl``); databroker-pack writes a folder with such files under ``documents/`` and
the detector files beside them (``external_files/`` and a ``root_map``). :func:`find_exports`
finds the export files under a path, :func:`read_export` yields one file's documents.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from strainstream.errors import StrainstreamError

__all__ = ["EXPORT_SUFFIXES", "ExportError", "find_exports", "read_export"]

#: the export formats this reads
EXPORT_SUFFIXES = (".jsonl", ".msgpack")

#: document names of the event model
_NAMES = {"start", "descriptor", "event", "event_page", "resource", "datum", "datum_page",
          "stream_resource", "stream_datum", "stop"}


class ExportError(StrainstreamError, ValueError):
    """A document export is unreadable or is not a bluesky document stream."""


def find_exports(path: str | os.PathLike) -> list[Path]:
    """The export files at ``path``: the file itself, or every ``.jsonl``/``.msgpack`` below
    the folder (databroker-pack's ``documents/`` included), sorted by name."""
    p = Path(path)
    if p.is_file():
        if p.suffix not in EXPORT_SUFFIXES:
            raise ExportError(f"{p}: not a document export (expected {' or '.join(EXPORT_SUFFIXES)})")
        return [p]
    if not p.is_dir():
        raise ExportError(f"{p}: no such file or folder")
    return sorted(f for f in p.rglob("*") if f.suffix in EXPORT_SUFFIXES and f.is_file())


def _pair(item: Any, where: str) -> tuple[str, dict[str, Any]]:
    if (not isinstance(item, (list, tuple)) or len(item) != 2 or item[0] not in _NAMES
            or not isinstance(item[1], dict)):
        raise ExportError(f"{where}: not a [name, document] pair of the bluesky event model "
                          f"(got {str(item)[:80]!r})")
    return str(item[0]), item[1]


def read_export(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield the ``(name, doc)`` pairs of one export file, in order.

    Raises :class:`ExportError` naming the file and the line (jsonl) or document number
    (msgpack) of the first corrupt record; the documents before it have been yielded.
    """
    p = Path(path)
    if p.suffix == ".jsonl":
        with open(p, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    item = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ExportError(f"{p}, line {n}: corrupt JSON ({exc.msg})") from None
                yield _pair(item, f"{p}, line {n}")
    elif p.suffix == ".msgpack":
        import msgpack
        import msgpack_numpy

        with open(p, "rb") as f:
            unpacker = msgpack.Unpacker(f, object_hook=msgpack_numpy.decode, raw=False,
                                        strict_map_key=False, max_buffer_size=2**31 - 1)
            n = 0
            try:
                for item in unpacker:
                    n += 1
                    yield _pair(item, f"{p}, document {n}")
            except (msgpack.exceptions.ExtraData, msgpack.exceptions.FormatError,
                    msgpack.exceptions.StackError, ValueError) as exc:
                if isinstance(exc, ExportError):
                    raise
                raise ExportError(f"{p}, after document {n}: corrupt msgpack ({exc})") from None
            if unpacker.tell() < p.stat().st_size:  # a truncated last record is skipped silently
                raise ExportError(f"{p}, after document {n}: the file ends inside a record "
                                  "(truncated copy?)")
    else:
        raise ExportError(f"{p}: not a document export (expected {' or '.join(EXPORT_SUFFIXES)})")
