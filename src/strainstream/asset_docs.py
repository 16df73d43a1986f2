"""Resource/Datum -> StreamResource/StreamDatum, with each event's own frame and seq_num.

ophyd's area detectors (``FileStoreHDF5IterativeWrite``) describe their files with a
``Resource`` (spec ``AD_HDF5``, ``frame_per_point``) and one ``Datum`` per frame
(``point_number``), referenced by ``datum_id`` in the event. Everything downstream of the
RunEngine here (tiled's storage, the live worker, replay) works with StreamResource /
StreamDatum, whose datum says both which frames of the file (``indices``) and which events
(``seq_nums``) it covers.

bluesky_tiled_plugins' own conversion derives ``seq_nums`` from the frame index, which is
only right while every frame taken was recorded. When the RunEngine suspends (beam dump,
shutter) it drops the event in progress and takes the frame again: the file then holds a
frame no event references, and event k is frame k (not k-1) of the file. This converter
pairs each event with the datum it references, so seq_num and frame index stay each its own.

:class:`DatumToStream` wraps a document callback ``cb(name, doc)``:

- ``resource`` and ``datum`` (and ``datum_page``) are held back;
- a ``descriptor`` whose data key is ``external: "FILESTORE:"`` is passed on with
  ``external: "STREAM:"`` and, for one frame per point, the frame shape without the leading
  ``num_images`` axis ophyd adds;
- an ``event_page`` referencing no datum passes through whole (a fly scan's page, whose frames
  come in its own StreamDatum ranges);
- an ``event`` (or ``event_page``) referencing a datum is passed on without that key, followed
  by one ``stream_resource`` (first time a resource is used by a descriptor) and one
  ``stream_datum`` (``indices`` = ``point_number`` × ``frame_per_point`` ..., ``seq_nums`` =
  the event's);
- datums never referenced by a saved event are dropped at ``stop``;
- StreamResource/StreamDatum documents from newer devices pass through unchanged.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable, Mapping
from typing import Any

from event_model import unpack_datum_page, unpack_event_page

__all__ = ["DatumToStream", "SPEC_MIMETYPES", "TIFF_MIMETYPE", "map_root", "resource_path"]

TIFF_MIMETYPE = "multipart/related;type=image/tiff"

#: Resource spec -> (StreamResource mimetype, dataset inside the file); the specs of
#: area-detector-handlers' AreaDetectorHDF5Handler / AreaDetectorTiffHandler family
SPEC_MIMETYPES: dict[str, tuple[str, str | None]] = {
    "AD_HDF5": ("application/x-hdf5", "/entry/data/data"),
    "AD_HDF5_SWMR": ("application/x-hdf5", "/entry/data/data"),
    "AD_HDF5_SWMR_STREAM": ("application/x-hdf5", "/entry/data/data"),
    "HDF5": ("application/x-hdf5", "/entry/data/data"),
    "AD_TIFF": (TIFF_MIMETYPE, None),
}


def map_root(path: str, root_map: Mapping[str, str] | None) -> str:
    """``path`` with the longest matching prefix of ``root_map`` (OLD -> NEW) replaced."""
    for old in sorted(root_map or {}, key=len, reverse=True):
        o = old.rstrip("/")
        if path == o or path.startswith(o + "/"):
            return (root_map[old].rstrip("/") or "/") + path[len(o):] if o else path
    return path


def resource_path(resource: Mapping[str, Any], root_map: Mapping[str, str] | None = None) -> str:
    """The absolute path a Resource names (``root`` joined with ``resource_path``, mapped)."""
    path = resource.get("resource_path", "")
    root = resource.get("root") or ""
    if root and not path.startswith("/"):
        path = posixpath.join(root, path)
    elif root and path.startswith("/") and not path.startswith(root):
        path = posixpath.join(root, path.lstrip("/"))
    path = path if path.startswith("/") else "/" + path
    return map_root(path, root_map)


def _uri(resource: Mapping[str, Any], root_map: Mapping[str, str] | None = None) -> str:
    return "file://localhost" + resource_path(resource, root_map)


class DatumToStream:
    """Document callback adapter: see the module docstring.

    Parameters
    ----------
    callback : callable
        ``callback(name, doc)`` receiving the converted documents, in order.
    root_map : dict, optional
        ``{OLD: NEW}`` path prefixes: Resources (and StreamResources) recorded under OLD are
        read under NEW (databroker's ``root_map``; an archive moved to another machine).
    """

    def __init__(self, callback: Callable[[str, Mapping[str, Any]], Any],
                 root_map: Mapping[str, str] | None = None) -> None:
        self.callback = callback
        self.root_map = dict(root_map or {})
        self._reset()

    def _reset(self) -> None:
        self._resources: dict[str, dict] = {}
        self._datums: dict[str, dict] = {}
        self._external: dict[str, dict[str, list]] = {}  # descriptor uid -> key -> ophyd shape
        self._emitted: set[str] = set()

    def __call__(self, name: str, doc: Mapping[str, Any]) -> None:
        handler = getattr(self, f"_{name}", None)
        if handler is None:
            self.callback(name, doc)
        else:
            handler(doc)

    # -- documents --------------------------------------------------------------------------
    def _start(self, doc) -> None:
        self._reset()
        self.callback("start", doc)

    def _resource(self, doc) -> None:
        spec = str(doc.get("spec", "")).upper()
        if spec not in SPEC_MIMETYPES:
            raise ValueError(f"Resource {doc.get('uid')}: spec {spec!r} is not one this pipeline "
                             f"reads ({', '.join(sorted(SPEC_MIMETYPES))})")
        self._resources[doc["uid"]] = dict(doc)

    def _stream_resource(self, doc) -> None:
        if self.root_map and str(doc.get("uri", "")).startswith("file://"):
            from urllib.parse import urlparse

            parsed = urlparse(doc["uri"])
            doc = dict(doc, uri=f"file://{parsed.netloc}{map_root(parsed.path, self.root_map)}")
        self.callback("stream_resource", doc)

    def _datum(self, doc) -> None:
        self._datums[doc["datum_id"]] = dict(doc)

    def _datum_page(self, doc) -> None:
        for datum in unpack_datum_page(doc):
            self._datum(datum)

    def _descriptor(self, doc) -> None:
        doc = dict(doc)
        data_keys = {k: dict(v) for k, v in doc["data_keys"].items()}
        converted = {}
        for key, dk in data_keys.items():
            if str(dk.get("external") or "").startswith("FILESTORE"):
                converted[key] = list(dk.get("shape") or [])
                dk["external"] = "STREAM:"
                shape = list(dk.get("shape") or [])
                if len(shape) == 3 and shape[0] == 1:  # ophyd's (num_images, y, x), one per point
                    dk["shape"] = shape[1:]
        doc["data_keys"] = data_keys
        self._external[doc["uid"]] = converted
        self.callback("descriptor", doc)

    def _event(self, doc) -> None:
        external = self._external.get(doc["descriptor"], {})
        refs = {k: doc["data"][k] for k in external if k in doc["data"]}
        if refs:
            doc = dict(doc)
            doc["data"] = {k: v for k, v in doc["data"].items() if k not in refs}
            doc["timestamps"] = {k: v for k, v in doc["timestamps"].items() if k not in refs}
            if "filled" in doc:
                doc["filled"] = {k: v for k, v in doc["filled"].items() if k not in refs}
        self.callback("event", doc)
        for key, datum_id in refs.items():
            self._emit_stream(key, datum_id, doc)

    def _event_page(self, doc) -> None:
        external = self._external.get(doc["descriptor"], {})
        if not any(k in doc["data"] for k in external):  # (a fly scan's page: STREAM: frames)
            self.callback("event_page", doc)  # nothing to convert: one document, one write
            return
        for event in unpack_event_page(doc):
            self._event(event)

    def _stop(self, doc) -> None:
        self.callback("stop", doc)
        self._reset()

    # -- conversion -------------------------------------------------------------------------
    def _emit_stream(self, key: str, datum_id: str, event: Mapping[str, Any]) -> None:
        datum = self._datums.pop(datum_id, None)
        if datum is None:
            raise KeyError(f"event {event['seq_num']} references datum {datum_id} of {key!r}, "
                           "which was never emitted before it")
        resource = self._resources[datum["resource"]]
        kwargs = dict(datum.get("datum_kwargs") or {})
        per = int((resource.get("resource_kwargs") or {}).get("frame_per_point", 1) or 1)
        if "point_number" not in kwargs:
            raise ValueError(f"datum {datum_id} of {key!r} has no point_number "
                             f"(datum_kwargs {kwargs}); cannot tell which frame it is")
        start = int(kwargs["point_number"]) * per
        desc = event["descriptor"]
        sres_uid = f"{resource['uid']}-{desc}-{key}"
        if sres_uid not in self._emitted:
            self._emitted.add(sres_uid)
            spec = str(resource["spec"]).upper()
            mimetype, dataset = SPEC_MIMETYPES[spec]
            shape = self._external[desc][key]
            frame_shape = shape[1:] if len(shape) == 3 else shape
            params = {k: v for k, v in (resource.get("resource_kwargs") or {}).items()
                      if k != "frame_per_point"}
            uri = _uri(resource, self.root_map)
            if mimetype == TIFF_MIMETYPE:  # a folder of one file per frame (template, filename)
                uri = uri.rstrip("/") + "/"
                params["spec"] = spec
            else:
                params.setdefault("dataset", dataset)
                params.setdefault("swmr", True)
            if frame_shape:
                params.setdefault("chunk_shape", [1, *frame_shape])
            if per != 1:
                params["multiplier"] = per
            self.callback("stream_resource", {
                "uid": sres_uid, "data_key": key, "mimetype": mimetype, "uri": uri,
                "parameters": params, "run_start": resource.get("run_start", ""),
            })
        seq = int(event["seq_num"])
        self.callback("stream_datum", {
            "uid": f"{sres_uid}/{datum_id}", "stream_resource": sres_uid, "descriptor": desc,
            "indices": {"start": start, "stop": start + per},
            "seq_nums": {"start": seq, "stop": seq + 1},
        })
