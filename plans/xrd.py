"""Operando XRD on a coin cell while it charges: frames with the cycler readings beside them."""

from __future__ import annotations

from typing import Any

import bluesky.plan_stubs as bps
from bluesky.protocols import Readable
from bluesky.utils import MsgGenerator

from strainstream.rundesc import XRDKeys

from ._common import base_metadata, cell_run, preflight

__all__ = ["charge_setup", "operando_xrd", "start_charge"]


def operando_xrd(
    detector: Readable,
    cycler: Readable,
    *,
    calibration: dict[str, Any],
    rate_mA_g: float = 200.0,
    v_max_V: float = 4.5,
    v_min_V: float = 2.7,
    cv_hold: bool = False,
    frame_interval_s: float = 1.0,
    max_frames: int = 500,
    material: str = "SC-NM91",
    mass_mg: float | None = None,
    beam: Readable | None = None,
    open_shutter: bool = True,
    min_ring_current_mA: float = 50.0,
    reserve_frames: int | None = None,
    sectors: int | list[tuple[float, float]] | None = None,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Charge the cell at constant current and take an XRD frame every ``frame_interval_s``.

    Every event holds the detector frame (HDF5, referenced by StreamResource/StreamDatum)
    and the cycler's readings of the same moment (voltage, current, capacity, state of
    charge, cycle, cell time). The run ends when the cycler reaches ``v_max_V`` (and, with
    ``cv_hold``, when the constant-voltage hold ends) or after ``max_frames`` frames; the
    cell is then set to rest. With ``beam`` the plan pauses while the ring current is below
    ``min_ring_current_mA`` or the shutter is closed, and resumes by itself.

    A cycler that can only be read (``follow_only``, e.g. the potentiostat export-file
    follower :func:`strainstream.devices.cycler_file.cycler_file`) is not commanded: the
    potentiostat runs its own protocol, the plan records its newest row in every event and
    ends at the first event whose voltage reaches ``v_max_V`` (or after ``max_frames``);
    ``rate_mA_g`` and the voltage window are then recorded as the protocol's, not applied.

    Parameters
    ----------
    detector : area detector
        The XRD detector (frames written to HDF5 by the detector).
    cycler : Cycler
        Potentiostat/cycler device (:mod:`strainstream.devices.cycler`), or a read-only
        one (``follow_only``, :mod:`strainstream.devices.cycler_file`).
    calibration : dict
        Detector geometry from the CeO2 calibration (:func:`strainstream.xrd.calibrate`),
        incl. ``wavelength_A``; recorded with the run and used by the live analysis.
    rate_mA_g : float
        Charge current, mA per g of active material (> 0).
    v_max_V, v_min_V : float
        Voltage window, V vs Li/Li⁺.
    cv_hold : bool
        Hold ``v_max_V`` (constant voltage) after the constant-current step (not with a
        ``follow_only`` cycler: program the hold in the potentiostat).
    frame_interval_s : float
        Time between frames, s (>= 0).
    max_frames : int
        Upper bound on the number of frames.
    material : str
        Cathode material / preset, e.g. ``"SC-NM91"``.
    mass_mg : float, optional
        Active mass; read from the cycler when it reports one.
    beam : Beam device, optional
        Enables the beam suspenders (a closed shutter or a low ring current pauses the run).
    open_shutter : bool
        With ``beam``: open the photon shutter before the run starts.
    reserve_frames : int, optional
        Frames the detector's data directory must have room for before the run starts
        (default ``max_frames``, at most 1000: the charge usually ends well before).
    sectors : int or list of (float, float), optional
        Also refine azimuthal sectors live: n equal sectors (e.g. 8 → 8 × 45°) or
        ``[χ_lo, χ_hi]`` pairs in degrees; recorded as
        ``analysis_parameters.operando_xrd.sectors`` and giving a per-sector c (texture or
        strain anisotropy). The calibration's ``instrument_function`` (CeO2 Caglioti U, V,
        W and η) is recorded with it and used per peak.
    md : dict, optional
        Extra start-document metadata.

    Raises
    ------
    DataDirError
        Before the run starts, when the detector's data directory is missing, not writable
        or too full (checked by the detector's IOC).
    """
    _md, follow_only = yield from charge_setup(
        detector, cycler, calibration=calibration, rate_mA_g=rate_mA_g, v_max_V=v_max_V, v_min_V=v_min_V,
        cv_hold=cv_hold, frame_interval_s=frame_interval_s, max_frames=max_frames, material=material,
        mass_mg=mass_mg, reserve_frames=reserve_frames, sectors=sectors, md=md, plan_name="operando_xrd")

    def body():
        yield from bps.open_run(md=_md)
        # checkpoints: a suspension (beam dump, shutter, IOC away) re-takes the current frame
        # only; without them the RunEngine would rewind to the start of the run
        yield from bps.checkpoint()
        if not follow_only:
            yield from start_charge(cycler, rate_mA_g=rate_mA_g, v_max_V=v_max_V, v_min_V=v_min_V,
                                    cv_hold=cv_hold)
        for n in range(max_frames):
            yield from bps.checkpoint()
            yield from bps.trigger_and_read([detector, cycler])
            # and right after the save: a suspension during the wait must not rewind past a
            # saved event (the RunEngine would emit its seq_num again with a new frame)
            yield from bps.checkpoint()
            if follow_only:  # the potentiostat's protocol: stop recording at the limit
                running = (yield from bps.rd(cycler.voltage_V)) < v_max_V
            else:
                running = yield from bps.rd(cycler.running)
            if not running:
                break
            if n + 1 < max_frames and frame_interval_s > 0:
                yield from bps.sleep(frame_interval_s)
        yield from bps.close_run()

    return (yield from cell_run(body(), detector, cycler, beam=beam, open_shutter=open_shutter,
                                min_ring_current_mA=min_ring_current_mA, stop_cell=not follow_only))


def charge_setup(detector: Readable, cycler: Readable, *, calibration: dict[str, Any], rate_mA_g: float,
                 v_max_V: float, v_min_V: float, cv_hold: bool, frame_interval_s: float | None,
                 max_frames: int, material: str, mass_mg: float | None, reserve_frames: int | None,
                 sectors: int | list[tuple[float, float]] | None, md: dict[str, Any] | None,
                 plan_name: str) -> MsgGenerator[tuple[dict[str, Any], bool]]:
    """Check a charge's arguments and the detector's data directory; return its start metadata
    and whether the cycler is follow-only (the parameters as :func:`operando_xrd`'s)."""
    if not rate_mA_g > 0:
        raise ValueError(f"rate_mA_g must be > 0 for a charge, got {rate_mA_g}")
    if not v_min_V < v_max_V:
        raise ValueError(f"v_min_V ({v_min_V}) must be below v_max_V ({v_max_V})")
    if (frame_interval_s is not None and frame_interval_s < 0) or max_frames < 1:
        raise ValueError("frame_interval_s must be >= 0 and max_frames >= 1")
    if not calibration or "wavelength_A" not in calibration:
        raise ValueError("calibration must be a geometry dict with wavelength_A (strainstream.xrd.calibrate)")
    if sectors is not None:
        n_ok = isinstance(sectors, int) and not isinstance(sectors, bool) and 2 <= sectors <= 36
        pairs_ok = isinstance(sectors, list | tuple) and 1 <= len(sectors) <= 36 and all(
            isinstance(p, list | tuple) and len(p) == 2 and -360 <= p[0] < p[1] <= 360 for p in sectors)
        if not (n_ok or pairs_ok):
            raise ValueError(f"sectors must be a number of sectors 2–36 (e.g. 8) or a list of "
                             f"(chi_lo, chi_hi) pairs in degrees, got {sectors!r}")
        md = dict(md or {})
        params = {k: dict(v) for k, v in (md.get("analysis_parameters") or {}).items()}
        params.setdefault("operando_xrd", {})["sectors"] = (
            sectors if isinstance(sectors, int) else [[float(a), float(b)] for a, b in sectors])
        md["analysis_parameters"] = params
    follow_only = bool(getattr(cycler, "follow_only", False))  # read only, never commanded
    if follow_only and cv_hold:
        raise ValueError(f"cv_hold commands the cycler, and {cycler.name} can only be read "
                         "(follow_only): program the CV hold in the potentiostat, pass cv_hold=False")
    yield from preflight([detector], min(max_frames, 1000) if reserve_frames is None else reserve_frames)
    if mass_mg is None and hasattr(cycler, "mass_mg"):
        mass_mg = yield from bps.rd(cycler.mass_mg)
    _md = base_metadata(
        "operando_xrd", md,
        material=material, mass_mg=mass_mg, rate_mA_g=rate_mA_g, v_window_V=[v_min_V, v_max_V],
        cv_hold=cv_hold, frame_interval_s=frame_interval_s, max_frames=max_frames,
        cycler_control="follow" if follow_only else "command",
        wavelength_A=calibration["wavelength_A"], calibration=dict(calibration),
        detectors=[detector.name], motors=[],
        plan_name=plan_name,
        # what the analysis reads (strainstream.rundesc.XRDKeys)
        # (image: the run's one detector; readings the cycler has, by their event keys)
        xrd_keys=XRDKeys(**{name: f"{cycler.name}_{suffix}" for name, suffix in XRDKeys.SUFFIXES.items()
                            if hasattr(cycler, suffix)}).to_start(),
    )

    return _md, follow_only


def start_charge(cycler: Readable, *, rate_mA_g: float, v_max_V: float, v_min_V: float,
                 cv_hold: bool) -> MsgGenerator:
    """Start the constant-current charge (and CV hold) on a commanded cycler."""
    yield from bps.mv(cycler.mode, "CC", cycler.current_sp_mA_g, rate_mA_g,
                      cycler.v_max_V, v_max_V, cycler.v_min_V, v_min_V,
                      cycler.then_cv, int(bool(cv_hold)), cycler.step_time_s, 0.0)
    yield from bps.mv(cycler.start_cmd, 1)  # completes when the cycler has applied it
