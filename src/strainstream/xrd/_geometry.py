"""Detector geometry dictionaries, PONI files and pyFAI integrators.

A geometry is a plain JSON-able dict (pyFAI conventions, SI units named in the keys)::

    {"distance_m": 1.0, "poni1_m": 0.2048, "poni2_m": 0.2048,
     "rot1": 0.0, "rot2": 0.0, "rot3": 0.0,            # radians, pyFAI convention
     "wavelength_A": 0.1665, "pixel_size_um": [200.0, 200.0], "shape": [2048, 2048]}
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
        columns); ``shape`` is ``[rows, cols]``. Extra keys are kept.

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
    return g


def make_azimuthal_integrator(geometry: dict):
    """A pyFAI ``AzimuthalIntegrator`` for a geometry dict.

    Parameters
    ----------
    geometry : dict
        Geometry dict (see :func:`validate_geometry`).

    Returns
    -------
    pyFAI.integrator.azimuthal.AzimuthalIntegrator
        Flat detector of ``shape`` pixels of ``pixel_size_um``; SI units inside pyFAI.
    """
    from pyFAI.detectors import Detector
    from pyFAI.integrator.azimuthal import AzimuthalIntegrator

    g = validate_geometry(geometry)
    det = Detector(g["pixel_size_um"][0] * 1e-6, g["pixel_size_um"][1] * 1e-6,
                   max_shape=tuple(g["shape"]))
    return AzimuthalIntegrator(dist=g["distance_m"], poni1=g["poni1_m"], poni2=g["poni2_m"],
                               rot1=g["rot1"], rot2=g["rot2"], rot3=g["rot3"], detector=det,
                               wavelength=g["wavelength_A"] * 1e-10)


def geometry_from_pyfai(ai) -> dict:
    """Geometry dict from a pyFAI geometry / integrator object.

    Parameters
    ----------
    ai : pyFAI.geometry.Geometry
        Any pyFAI geometry with a wavelength and a detector of known ``max_shape``.

    Returns
    -------
    dict
        Geometry dict (distance_m, poni1_m, poni2_m, rot1–3 in rad, wavelength_A,
        pixel_size_um [rows, cols], shape [rows, cols]).
    """
    det = ai.detector
    return validate_geometry({
        "distance_m": ai.dist, "poni1_m": ai.poni1, "poni2_m": ai.poni2,
        "rot1": ai.rot1, "rot2": ai.rot2, "rot3": ai.rot3,
        "wavelength_A": ai.wavelength * 1e10,
        "pixel_size_um": [round(det.pixel1 * 1e6, 6), round(det.pixel2 * 1e6, 6)],
        "shape": list(det.max_shape),
    })


def geometry_to_poni(geometry: dict) -> str:
    """PONI (version 2) text for a geometry dict, readable by ``pyFAI.load``.

    Parameters
    ----------
    geometry : dict
        Geometry dict (see :func:`validate_geometry`).

    Returns
    -------
    str
        PONI file content (SI units, generic ``Detector`` with pixel sizes and shape).
    """
    g = validate_geometry(geometry)
    det_config = {"pixel1": g["pixel_size_um"][0] * 1e-6, "pixel2": g["pixel_size_um"][1] * 1e-6,
                  "max_shape": g["shape"]}
    lines = [
        "# Nota: C-Order, 1 refers to the Y axis, 2 to the X axis",
        "# Written by strainstream.xrd",
        "poni_version: 2",
        "Detector: Detector",
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


def load_poni(path: str | Path) -> dict:
    """Read a PONI file (any version pyFAI reads) into a geometry dict.

    Parameters
    ----------
    path : str or Path
        PONI file.

    Returns
    -------
    dict
        Geometry dict (see :func:`validate_geometry`).

    Raises
    ------
    ValueError
        If the file is missing or not a PONI file with a wavelength and detector shape.
    """
    import pyFAI

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"PONI file {path} does not exist")
    try:
        ai = pyFAI.load(str(path))
    except Exception as exc:  # pyFAI raises several types for malformed files
        raise ValueError(f"cannot read PONI file {path}: {exc}") from exc
    if not ai.wavelength or ai.detector.max_shape is None:
        raise ValueError(f"PONI file {path} lacks the wavelength or the detector shape")
    return geometry_from_pyfai(ai)
