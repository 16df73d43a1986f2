"""Detector geometry dictionaries, PONI files and pyFAI integrators.

A geometry is a plain JSON-able dict (pyFAI conventions, SI units named in the keys)::

    {"distance_m": 1.0, "poni1_m": 0.2048, "poni2_m": 0.2048,
     "rot1": 0.0, "rot2": 0.0, "rot3": 0.0,            # radians, pyFAI convention
     "wavelength_A": 0.1665, "pixel_size_um": [200.0, 200.0], "shape": [2048, 2048]}

Two optional keys describe real detectors: ``"detector"``, a pyFAI detector name
(``"Pilatus1M"``, ``"Eiger2_4M"``, ``"Perkin"``...; its module gaps and dead pixels are then
masked), and ``"orientation"``, pyFAI's detector orientation (1–4, default 3 = origin at the
bottom right seen from the sample; 2 = top right, the convention of Dioptas: a PONI file
Dioptas wrote without an orientation describes the image flipped up-down, i.e. orientation 2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

GEOMETRY_KEYS = ("distance_m", "poni1_m", "poni2_m", "rot1", "rot2", "rot3", "wavelength_A",
                 "pixel_size_um", "shape")


#: largest detector (pixels) a geometry may declare: 16k × 16k
MAX_PIXELS = 1 << 28


def _number(value, key: str) -> float:
    """``value`` of geometry key ``key`` as float; ValueError naming the key otherwise."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise ValueError(f"geometry {key} must be a number, got {value!r}")
    return float(value)


def validate_geometry(geometry: dict) -> dict:
    """Check and normalise a geometry dict.

    Parameters
    ----------
    geometry : dict
        Keys of :data:`GEOMETRY_KEYS` (``rot1_rad``... accepted for ``rot1``...);
        ``pixel_size_um`` may be a number (square pixels) or ``[pixel1, pixel2]`` (rows,
        columns); ``shape`` is ``[rows, cols]``; optional ``instrument_function``
        (the CeO2 instrument function, :meth:`InstrumentWidth.instrument_function`).
        Extra keys are kept.

    Returns
    -------
    dict
        A copy with floats, ``pixel_size_um`` as a 2-list and ``shape`` as a 2-list of int.

    Raises
    ------
    ValueError
        Missing keys or non-physical values.
    """
    if not isinstance(geometry, dict):
        raise ValueError(f"geometry must be a dict with keys {GEOMETRY_KEYS}, got "
                         f"{type(geometry).__name__}")
    missing = [k for k in GEOMETRY_KEYS if k not in geometry
               and not (k.startswith("rot") and f"{k}_rad" in geometry)]
    if missing:
        raise ValueError(f"geometry is missing {missing}; calibrate with "
                         "strainstream.xrd.calibrate or load a PONI file with load_poni")
    g = dict(geometry)
    for i in (1, 2, 3):  # accept unit-suffixed rotation names too
        if f"rot{i}" not in g and f"rot{i}_rad" in g:
            g[f"rot{i}"] = g.pop(f"rot{i}_rad")
    for k in ("distance_m", "poni1_m", "poni2_m", "rot1", "rot2", "rot3", "wavelength_A"):
        g[k] = _number(g[k], k)
    px = g["pixel_size_um"]
    if isinstance(px, list | tuple):
        px = [_number(v, "pixel_size_um") for v in px]
    else:
        px = [_number(px, "pixel_size_um")] * 2
    if not isinstance(g["shape"], list | tuple):
        raise ValueError(f"geometry shape must be [rows, cols], got {g['shape']!r}")
    shape = [_number(v, "shape") for v in g["shape"]]
    if len(px) != 2 or len(shape) != 2:
        raise ValueError("geometry pixel_size_um and shape must have two entries (rows, cols)")
    if not all(math.isfinite(v) and v.is_integer() for v in shape) or math.prod(shape) > MAX_PIXELS:
        raise ValueError(f"geometry shape must be [rows, cols] of at most {MAX_PIXELS} pixels, "
                         f"got {g['shape']!r}")
    shape = [int(v) for v in shape]
    if not (g["distance_m"] > 0 and g["wavelength_A"] > 0 and min(px) > 0 and min(shape) > 0):
        raise ValueError("geometry needs distance_m > 0, wavelength_A > 0, positive pixel size "
                         "and shape")
    if not all(math.isfinite(g[k]) for k in GEOMETRY_KEYS[:7]):
        raise ValueError("geometry contains NaN/inf")
    g["pixel_size_um"] = px
    g["shape"] = shape
    if "orientation" in g:
        o = g["orientation"]
        if isinstance(o, bool) or not isinstance(o, int | np.integer) or int(o) not in (1, 2, 3, 4):
            raise ValueError(f"geometry orientation must be pyFAI's 1, 2, 3 or 4, got {o!r}")
        g["orientation"] = int(o)
    if "detector" in g and g["detector"] is not None and not isinstance(g["detector"], str):
        raise ValueError(f"geometry detector must be a pyFAI detector name, got {g['detector']!r}")
    if g.get("instrument_function") is not None:
        from ._instrument import instrument_width_function

        if not isinstance(g["instrument_function"], dict):
            raise ValueError("geometry instrument_function must be a dict such as "
                             "{'model': 'caglioti', 'U_deg2': U, 'V_deg2': V, 'W_deg2': W, "
                             f"'eta': η}}, got {g['instrument_function']!r}")
        instrument_width_function(g["instrument_function"], g["wavelength_A"])
        g["instrument_function"] = dict(g["instrument_function"])
    return g


def make_detector(geometry: dict):
    """The pyFAI detector of a geometry dict: named (with its module-gap mask) or generic.

    Parameters
    ----------
    geometry : dict
        Geometry dict (see :func:`validate_geometry`); optional ``detector`` (pyFAI name) and
        ``orientation`` (1–4).

    Returns
    -------
    pyFAI.detectors.Detector

    Raises
    ------
    ValueError
        Unknown detector name, or a named detector whose pixel size or shape differs from
        the geometry's.
    """
    from pyFAI.detectors import Detector, detector_factory

    g = validate_geometry(geometry)
    config = {"orientation": g.get("orientation", 3)}
    name = g.get("detector")
    if name:
        import logging

        quiet = logging.getLogger("pyFAI.detectors")
        level = quiet.level
        quiet.setLevel(logging.CRITICAL)  # pyFAI logs the whole detector list / binning tries
        try:
            det = detector_factory(name, config)
            if det.shape is not None and list(det.shape) != g["shape"]:
                det.guess_binning(tuple(g["shape"]))  # a binned read-out (e.g. flat panels)
        except Exception as exc:  # pyFAI raises RuntimeError/KeyError for unknown names
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ValueError(f"unknown pyFAI detector {name!r} ({first}); use a name of "
                             "pyFAI.detectors.ALL_DETECTORS such as 'Pilatus1M', 'Eiger2_4M' or "
                             "'Perkin'") from None
        finally:
            quiet.setLevel(level)
        px = [det.pixel1 * 1e6, det.pixel2 * 1e6]
        if (det.shape is not None and list(det.shape) != g["shape"]) or any(
                abs(a - b) > 1e-3 * b for a, b in zip(px, g["pixel_size_um"], strict=True)):
            raise ValueError(f"detector {name!r} has {det.shape} pixels of "
                             f"{px[0]:g}×{px[1]:g} µm but the geometry declares {g['shape']} "
                             f"pixels of {g['pixel_size_um'][0]:g}×{g['pixel_size_um'][1]:g} µm "
                             "(binned image? then use a generic detector: drop 'detector')")
        return det
    return Detector(g["pixel_size_um"][0] * 1e-6, g["pixel_size_um"][1] * 1e-6,
                    max_shape=tuple(g["shape"]), orientation=config["orientation"])


def make_azimuthal_integrator(geometry: dict):
    """A pyFAI ``AzimuthalIntegrator`` for a geometry dict.

    Parameters
    ----------
    geometry : dict
        Geometry dict (see :func:`validate_geometry`).

    Returns
    -------
    pyFAI.integrator.azimuthal.AzimuthalIntegrator
        Flat detector of ``shape`` pixels of ``pixel_size_um`` (the named pyFAI detector
        when ``detector`` is given, see :func:`make_detector`); SI units inside pyFAI.
    """
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    g = validate_geometry(geometry)
    det = make_detector(g)
    return AzimuthalIntegrator(dist=g["distance_m"], poni1=g["poni1_m"], poni2=g["poni2_m"],
                               rot1=g["rot1"], rot2=g["rot2"], rot3=g["rot3"], detector=det,
                               wavelength=g["wavelength_A"] * 1e-10)


def geometry_from_pyfai(ai, shape=None) -> dict:
    """Geometry dict from a pyFAI geometry / integrator object.

    Parameters
    ----------
    ai : pyFAI.geometry.Geometry
        Any pyFAI geometry with a wavelength (and a detector of known ``max_shape`` unless
        ``shape`` is given).
    shape : (int, int), optional
        Detector shape (rows, cols) when the detector does not define one (generic detector
        of a PONI file), e.g. the shape of the calibrant image.

    Returns
    -------
    dict
        Geometry dict (distance_m, poni1_m, poni2_m, rot1–3 in rad, wavelength_A,
        pixel_size_um [rows, cols], shape [rows, cols]; ``detector`` for a named pyFAI
        detector, ``orientation`` when not pyFAI's default 3).
    """
    det = ai.detector
    det_shape = det.shape if det.shape is not None else det.max_shape
    if det_shape is None:
        det_shape = shape
    if det_shape is None:
        raise ValueError("the detector has no shape: give the image shape")
    extra = {}
    if type(det).__name__ != "Detector":
        extra["detector"] = type(det).__name__
    orientation = int(getattr(det, "orientation", 3) or 3)
    if orientation != 3:
        extra["orientation"] = orientation
    return validate_geometry({
        "distance_m": ai.dist, "poni1_m": ai.poni1, "poni2_m": ai.poni2,
        "rot1": ai.rot1, "rot2": ai.rot2, "rot3": ai.rot3,
        "wavelength_A": ai.wavelength * 1e10,
        "pixel_size_um": [round(det.pixel1 * 1e6, 6), round(det.pixel2 * 1e6, 6)],
        "shape": [int(v) for v in det_shape],
        **extra,
    })


def geometry_to_poni(geometry: dict) -> str:
    """PONI text for a geometry dict, readable by ``pyFAI.load`` (and Dioptas).

    Version 2 with a generic detector; version 2.1 (with the orientation) when the geometry
    names a pyFAI detector or an orientation other than 3.

    Parameters
    ----------
    geometry : dict
        Geometry dict (see :func:`validate_geometry`).

    Returns
    -------
    str
        PONI file content (SI units).
    """
    g = validate_geometry(geometry)
    det_config = {"pixel1": g["pixel_size_um"][0] * 1e-6, "pixel2": g["pixel_size_um"][1] * 1e-6,
                  "max_shape": g["shape"]}
    version, det_name = "2", "Detector"
    if g.get("detector") or g.get("orientation", 3) != 3:
        version = "2.1"
        det_config["orientation"] = g.get("orientation", 3)
        if g.get("detector"):
            det_name = g["detector"]
            det_config = {"orientation": det_config["orientation"]}
    lines = [
        "# Nota: C-Order, 1 refers to the Y axis, 2 to the X axis",
        "# Written by strainstream.xrd",
        f"poni_version: {version}",
        f"Detector: {det_name}",
        f"Detector_config: {json.dumps(det_config)}",
        f"Distance: {g['distance_m']!r}",
        f"Poni1: {g['poni1_m']!r}",
        f"Poni2: {g['poni2_m']!r}",
        f"Rot1: {g['rot1']!r}",
        f"Rot2: {g['rot2']!r}",
        f"Rot3: {g['rot3']!r}",
        f"Wavelength: {g['wavelength_A'] * 1e-10!r}",
    ]
    return "\n".join(lines) + "\n"


def save_poni(geometry: dict, path: str | Path) -> Path:
    """Write a geometry dict as a PONI file.

    Parameters
    ----------
    geometry : dict
        Geometry dict (see :func:`validate_geometry`).
    path : str or Path
        Output file.

    Returns
    -------
    Path
        The path written.
    """
    path = Path(path)
    path.write_text(geometry_to_poni(geometry))
    return path


def load_poni(path: str | Path, shape=None, *, orientation=None) -> dict:
    """Read a PONI file (any version pyFAI or Dioptas writes) into a geometry dict.

    Version 1 files (``PixelSize1/2``, no detector) and version 2 files with a generic
    detector hold no detector shape: give ``shape`` (the calibrant image's), or the
    file is refused. A named detector (``Detector: Pilatus1M``) brings its own shape.

    Parameters
    ----------
    path : str or Path
        PONI file.
    shape : (int, int), optional
        Detector shape (rows, cols) used when the file has none.
    orientation : int, optional
        pyFAI detector orientation (1–4) overriding the file's, e.g. 2 for a PONI file
        that Dioptas wrote without an orientation (Dioptas flips images up-down).

    Returns
    -------
    dict
        Geometry dict (see :func:`validate_geometry`).

    Raises
    ------
    ValueError
        If the file is missing, is not a PONI file, has no wavelength, or has no detector
        shape and ``shape`` is not given.
    """
    import pyFAI

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"PONI file {path} does not exist")
    try:
        ai = pyFAI.load(str(path))
    except Exception as exc:  # pyFAI raises several types for malformed files
        raise ValueError(f"cannot read PONI file {path}: {exc}") from exc
    if not ai.wavelength:
        raise ValueError(f"PONI file {path} has no wavelength (add a 'Wavelength:' line in m)")
    if ai.detector.max_shape is None and shape is None:
        raise ValueError(f"PONI file {path} holds no detector shape (a version-1 file or a "
                         "generic detector): give the image shape (the calibrant image's)")
    g = geometry_from_pyfai(ai, shape=shape)
    if orientation is not None:
        g["orientation"] = orientation
        if g["orientation"] == 3:
            g.pop("orientation")
    return validate_geometry(g)
