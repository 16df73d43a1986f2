"""TXM-XANES: full-field images across the Ni K edge with refocus, flats and darks.

Event layout (one event per camera frame, all in stream ``primary``): the camera frame (HDF5,
referenced by StreamResource/StreamDatum), the readbacks (and set-points) of the
monochromator energy, zone plate, detector and sample in/out motors, the shutter status
(when a ``beam`` is given) and three integer soft signals:

``txm_role``
    what the frame is: ``0`` dark (shutter closed), ``1`` sample image, ``2`` flat field
    (sample out) — see :data:`ROLES`;
``txm_ienergy``
    index of the planned energy (``-1`` for darks);
``txm_repeat``
    repeat number of the energy scan (0-based; time series with ``repeats > 1``).

Order: ``n_darks`` darks first (shutter closed, taken once per run), then for every repeat
and energy: move the monochromator, zone plate and detector together to the focus for that
energy, ``images_per_energy`` sample images, sample out, ``flats_per_energy`` flats, sample
back in. The start document holds ``experiment="txm_xanes"``, the planned ``energies_eV``,
the ``zone_plate`` parameters (or calibration table), the ``focus`` positions and
magnification per energy, ``pixel_size_um``, ``exposure_s``, ``txm_keys`` (which event keys
hold the frames, motors and soft signals) and ``num_points`` for progress. The live
analysis is :class:`strainstream.callbacks.xanes.XANESCallback`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Readable
from bluesky.utils import MsgGenerator
from ophyd import Signal

from ._common import base_metadata, beam_suspenders, open_shutter, preflight

__all__ = ["DEFAULT_ZONE_PLATE", "ROLES", "focus_positions", "txm_xanes"]

#: role codes of the ``txm_role`` soft signal
ROLES = {"dark": 0, "sample": 1, "flat": 2}
#: FXI-type zone plate (arguments of :func:`strainstream.xanes.zone_plate_optics`); the
#: simulated endstation IOC is in focus for exactly these optics
DEFAULT_ZONE_PLATE = {"zp_diameter_um": 244.0, "outer_zone_width_nm": 30.0, "sample_to_detector_m": 1.0}
_TABLE_KEYS = ("energy_eV", "zp_z_mm")


def focus_positions(energies_eV: Sequence[float], zone_plate: Mapping[str, Any] | None = None
                    ) -> dict[str, np.ndarray]:
    """Zone-plate and detector positions in focus at each energy, and the magnification.

    Parameters
    ----------
    energies_eV : sequence of float, shape (n,)
        Photon energies, eV.
    zone_plate : mapping, optional
        Either zone-plate optics for the thin-lens equation (keys of
        :data:`DEFAULT_ZONE_PLATE`: ``zp_diameter_um``, ``outer_zone_width_nm``,
        ``sample_to_detector_m``; missing keys take the defaults; the detector stays at the
        sample-to-detector distance, the zone plate moves to focus), or a calibration table
        with ``energy_eV`` (increasing) and ``zp_z_mm`` lists and optionally ``det_z_mm``
        (one value or a list; default 1000 mm), interpolated linearly (no extrapolation).

    Returns
    -------
    dict
        ``zp_z_mm`` (sample-to-zone-plate distance, mm), ``det_z_mm`` (sample-to-detector
        distance, mm) and ``magnification`` ((det_z − zp_z) / zp_z), each shape (n,).

    Raises
    ------
    ValueError
        Unknown keys, a table whose energies are not increasing, or an energy outside the table.
    """
    e = np.asarray(energies_eV, dtype=np.float64).reshape(-1)
    zp_cfg = dict(zone_plate or {})
    if "energy_eV" in zp_cfg or "zp_z_mm" in zp_cfg:
        missing = [k for k in _TABLE_KEYS if k not in zp_cfg]
        if missing:
            raise ValueError(f"zone_plate calibration table lacks {missing}; give energy_eV and zp_z_mm lists")
        te = np.asarray(zp_cfg["energy_eV"], dtype=np.float64)
        tz = np.asarray(zp_cfg["zp_z_mm"], dtype=np.float64)
        if te.ndim != 1 or te.shape != tz.shape or te.size < 2 or np.any(np.diff(te) <= 0):
            raise ValueError("zone_plate table: energy_eV must be >= 2 increasing values with one "
                             "zp_z_mm per energy")
        if e.min() < te[0] - 1e-9 or e.max() > te[-1] + 1e-9:
            raise ValueError(f"energies {e.min():.1f}-{e.max():.1f} eV are outside the zone-plate "
                             f"calibration table ({te[0]:.1f}-{te[-1]:.1f} eV); extend the table")
        zp = np.interp(e, te, tz)
        det = zp_cfg.get("det_z_mm", 1000.0)
        det = (np.interp(e, te, np.asarray(det, dtype=np.float64)) if np.ndim(det)
               else np.full(e.shape, float(det)))
    else:
        from strainstream.xanes import zone_plate_optics

        unknown = set(zp_cfg) - set(DEFAULT_ZONE_PLATE)
        if unknown:
            raise ValueError(f"unknown zone_plate keys {sorted(unknown)}; use {sorted(DEFAULT_ZONE_PLATE)} "
                             "or a calibration table (energy_eV, zp_z_mm, det_z_mm)")
        optics = zone_plate_optics(e, **{**DEFAULT_ZONE_PLATE, **zp_cfg})
        zp = optics.sample_to_zp_m * 1e3
        det = (optics.sample_to_zp_m + optics.zp_to_detector_m) * 1e3
    zp, det = np.round(zp, 6), np.round(det, 6)  # what the motor records hold
    return {"zp_z_mm": zp, "det_z_mm": det, "magnification": (det - zp) / zp}


def _rb(motor):
    return motor.readback if hasattr(motor, "readback") else motor


def txm_xanes(
    camera: Readable,
    es: Readable,
    *,
    energies_eV: Sequence[float] | None = None,
    n_darks: int = 5,
    zone_plate: Mapping[str, Any] | None = None,
    flats_per_energy: int = 1,
    images_per_energy: int = 1,
    repeats: int = 1,
    sample_in_mm: float = 0.0,
    sample_out_mm: float = 5.0,
    pixel_size_um: float = 0.04,
    exposure_s: float | None = None,
    beam: Readable | None = None,
    min_ring_current_mA: float = 50.0,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Energy scan across the Ni K edge with the zone plate refocused at every energy.

    Darks first (shutter closed), then at every energy: monochromator, zone plate and
    detector to the focus of that energy, sample image(s), sample out for the flat field(s),
    sample back in. The live worker turns the frames into absorbance images, an edge-jump
    preview and, at the end, the white-line energy map, histogram and statistics
    (``strainstream.callbacks.xanes``).

    Parameters
    ----------
    camera : area detector
        The TXM camera (frames written to HDF5 by the detector).
    es : Endstation
        Motors ``es.energy`` (eV), ``es.zp_z``, ``es.det_z`` (mm, distances from the sample)
        and ``es.sample_inout`` (mm).
    energies_eV : sequence of float, optional
        Energies in scan order, eV; default 8340-8360 eV in 1-eV steps (21 energies).
    n_darks : int
        Dark frames (shutter closed) at the start; needs ``beam`` (for its shutter) when > 0.
    zone_plate : mapping, optional
        Zone-plate optics or calibration table, see :func:`focus_positions`; default
        :data:`DEFAULT_ZONE_PLATE`.
    flats_per_energy, images_per_energy : int
        Frames per energy with the sample out / in (>= 1).
    repeats : int
        Repeat the energy scan (time series while cycling); darks are taken once.
    sample_in_mm, sample_out_mm : float
        ``es.sample_inout`` positions with the sample in the beam / out of the field of view.
    pixel_size_um : float
        Pixel size in the sample plane (voxel size), µm; recorded with the run.
    exposure_s : float, optional
        Camera exposure, s (set before the scan); default: the camera's current setting.
    beam : Beam device, optional
        Shutter: closed for the darks, opened for the energy scan, left as found at the end;
        enables the beam suspenders (ring current, shutter) for the energy scan, which then
        pauses and re-takes the interrupted frame.
    min_ring_current_mA : float
        Ring-current floor of the suspenders.
    md : dict, optional
        Extra start-document metadata.
    """
    e = np.asarray(
        np.arange(8340.0, 8360.5, 1.0) if energies_eV is None else energies_eV, dtype=np.float64
    ).reshape(-1)
    if e.size < 1 or not np.all(np.isfinite(e)):
        raise ValueError(f"energies_eV must be a non-empty list of finite energies (eV), got {energies_eV!r}")
    if np.unique(e).size != e.size:
        raise ValueError("energies_eV holds the same energy twice; give each energy once "
                         "(use images_per_energy / repeats for more frames)")
    if n_darks < 0 or flats_per_energy < 1 or images_per_energy < 1 or repeats < 1:
        raise ValueError(f"need n_darks >= 0 and flats_per_energy, images_per_energy, repeats >= 1; "
                         f"got {n_darks}, {flats_per_energy}, {images_per_energy}, {repeats}")
    if n_darks and beam is None:
        raise ValueError("darks need the shutter: pass beam= (its shutter closes for the darks) "
                         "or n_darks=0")
    if abs(sample_out_mm - sample_in_mm) < 1e-6:
        raise ValueError("sample_out_mm must differ from sample_in_mm")
    if not (pixel_size_um > 0 and math.isfinite(pixel_size_um)):
        raise ValueError(f"pixel_size_um must be > 0, got {pixel_size_um}")
    e = np.round(e, 6)
    focus = focus_positions(e, zone_plate)
    for mot, pos in ((es.energy, e), (es.zp_z, focus["zp_z_mm"]), (es.det_z, focus["det_z_mm"]),
                     (es.sample_inout, np.array([sample_in_mm, sample_out_mm]))):
        if hasattr(mot, "check_value"):  # refuse the plan before anything moves
            for p in (pos.min(), pos.max()):
                mot.check_value(float(p))
    zp_record = (dict(zone_plate) if zone_plate is not None and "zp_z_mm" in zone_plate
                 else {**DEFAULT_ZONE_PLATE, **dict(zone_plate or {})})
    zp_record = {k: (list(map(float, np.ravel(v))) if np.ndim(v) else float(v)) for k, v in zp_record.items()}

    sig_role = Signal(name="txm_role", value=ROLES["sample"])
    sig_ie = Signal(name="txm_ienergy", value=-1)
    sig_rep = Signal(name="txm_repeat", value=0)
    readables = [camera, es.energy, es.zp_z, es.det_z, es.sample_inout, sig_role, sig_ie, sig_rep]
    shutter_key = None
    if beam is not None:
        readables.append(beam.shutter)
        shutter_key = beam.shutter.status.name
    state: dict[str, Any] = {"shutter_was_open": None}

    def darks():
        yield from bps.mv(beam.shutter, "close", es.sample_inout, sample_in_mm, sig_role, ROLES["dark"],
                          sig_ie, -1)
        for _ in range(n_darks):
            yield from bps.trigger_and_read(readables)

    def scan():
        for rep in range(repeats):
            for i, energy in enumerate(e):
                yield from bps.checkpoint()
                yield from bps.mv(es.energy, float(energy), es.zp_z, float(focus["zp_z_mm"][i]),
                                  es.det_z, float(focus["det_z_mm"][i]), es.sample_inout, sample_in_mm,
                                  sig_ie, i, sig_rep, rep, sig_role, ROLES["sample"])
                for _ in range(images_per_energy):
                    yield from bps.checkpoint()  # a suspended frame is taken again
                    yield from bps.trigger_and_read(readables)
                    yield from bps.checkpoint()  # ... but never one already saved
                yield from bps.mv(es.sample_inout, sample_out_mm, sig_role, ROLES["flat"])
                for _ in range(flats_per_energy):
                    yield from bps.checkpoint()
                    yield from bps.trigger_and_read(readables)
                    yield from bps.checkpoint()
                yield from bps.mv(es.sample_inout, sample_in_mm)

    def body():
        exposure_signal = camera.cam.acquire_time if hasattr(camera, "cam") else getattr(camera, "exposure_s", None)
        if exposure_s is not None and exposure_signal is not None:
            yield from bps.mv(exposure_signal, float(exposure_s))
        exposure = float((yield from bps.rd(exposure_signal))) if exposure_signal is not None else exposure_s
        _md = base_metadata(
            "txm_xanes", md,
            plan_name="txm_xanes",
            detectors=[camera.name],
            motors=[es.energy.name, es.zp_z.name, es.det_z.name, es.sample_inout.name],
            num_points=int(n_darks + repeats * e.size * (images_per_energy + flats_per_energy)),
            energies_eV=[float(x) for x in e],
            zone_plate=zp_record,
            focus={k: [float(x) for x in v] for k, v in focus.items()},
            pixel_size_um=float(pixel_size_um),
            exposure_s=exposure,
            n_darks=int(n_darks), flats_per_energy=int(flats_per_energy),
            images_per_energy=int(images_per_energy), repeats=int(repeats),
            sample_in_mm=float(sample_in_mm), sample_out_mm=float(sample_out_mm),
            roles=dict(ROLES),
            txm_keys={"frames": f"{camera.name}_image", "energy": es.energy.name, "zp_z": es.zp_z.name,
                      "det_z": es.det_z.name, "sample_inout": es.sample_inout.name,
                      "role": sig_role.name, "ienergy": sig_ie.name, "repeat": sig_rep.name,
                      "shutter": shutter_key},
        )
        if beam is not None:
            state["shutter_was_open"] = (yield from bps.rd(beam.shutter.status)) == getattr(beam.shutter, "open_status", "Open")
        yield from bps.open_run(md=_md)
        if n_darks:
            yield from darks()  # shutter closed on purpose: outside the suspenders
        plan = scan()
        if beam is not None:
            yield from open_shutter(beam)  # with a fresh read of its status (the darks closed it)
            plan = bpp.suspend_wrapper(plan, beam_suspenders(beam, min_ring_current_mA=min_ring_current_mA))
        yield from plan
        yield from bps.close_run()

    def finish():
        yield from bps.mv(es.sample_inout, sample_in_mm)
        if beam is not None and state["shutter_was_open"] is not None:
            # the shutter as it was found (the darks closed it, the scan opened it)
            yield from bps.mv(beam.shutter, "open" if state["shutter_was_open"] else "close")

    n_frames = int(n_darks + repeats * e.size * (images_per_energy + flats_per_energy))
    yield from preflight([camera], n_frames)  # DataDirError before any document
    plan = bpp.stage_wrapper(body(), [camera])
    return (yield from bpp.finalize_wrapper(plan, finish()))
