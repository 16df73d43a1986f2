"""SXDM: a 2-D raster of the sample at every rocking angle θ, one pixel-detector frame per point.

Event layout (one event per frame, stream ``primary``): the detector frame (HDF5, referenced
by StreamResource/StreamDatum), the θ, sample-x and sample-y readbacks (and set-points), the
optional fluorescence/ROI channel, and three integer soft signals ``sxdm_itheta``, ``sxdm_iy``,
``sxdm_ix``: the index of the planned rocking angle and the raster indices of the frame.
The raster positions follow from the indices (and back) as::

    x_um = x_center_um + (ix - (nx - 1) / 2) * step_nm / 1000
    y_um = y_center_um + (iy - (ny - 1) / 2) * step_nm / 1000

Order: θ ascending (outer loop), then raster lines iy = 0 .. ny-1, and within a line ix
ascending, or alternating direction line by line with ``snake=True``. The start document
holds ``experiment="sxdm"``, the geometry keys of :mod:`strainstream.sxdm`
(``energy_keV, distance_m, pixel_size_um, delta_deg, gamma_deg, step_nm, hkl, cen_row,
cen_col``), the planned ``theta_deg`` list, the ``raster`` definition, ``sxdm_keys`` (which
event keys hold θ, the indices and the frames) and ``num_points`` for progress.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp
import numpy as np
from bluesky.protocols import Readable
from bluesky.utils import MsgGenerator
from ophyd import Signal
from ophyd.status import Status

from ._common import ad_frame_shape, base_metadata, beam_suspenders, preflight
from ._common import open_shutter as _open_shutter

logger = logging.getLogger(__name__)

__all__ = ["DETECTOR_GEOMETRY_KEYS", "find_bragg", "raster_positions", "simulated_detector_geometry",
           "sxdm_fly_map", "sxdm_map"]

#: detector geometry keys a caller may give in ``geometry`` (the rest come from the plan)
DETECTOR_GEOMETRY_KEYS = ("distance_m", "pixel_size_um", "delta_deg", "gamma_deg", "cen_row",
                          "cen_col")
#: (003) d-spacing (Å) the simulated endstation's detector arm is set to (charged SC-NM91)
SIM_D003_A = 13.70 / 3.0


class _IndexSignal(Signal):
    """A soft integer signal whose ``set`` completes at once (ophyd's Signal.set starts a
    thread per call: milliseconds per raster point)."""

    def set(self, value, **kwargs):
        self.put(int(value))
        st = Status(self)
        st.set_finished()
        return st


def raster_positions(center_um: float, n: int, step_nm: float) -> np.ndarray:
    """Positions (µm) of ``n`` raster points ``step_nm`` apart centred on ``center_um``."""
    return center_um + (np.arange(n) - (n - 1) / 2.0) * step_nm / 1000.0


def simulated_detector_geometry(energy_eV: float, frame_shape: tuple[int, int],
                                d_A: float = SIM_D003_A) -> dict[str, float]:
    """The detector geometry of the simulated endstation IOC's SXDM detector.

    The IOC computes its frames with :func:`strainstream.sim.sxdm_frames.simulate_sxdm` for the
    current energy and crop shape (sample-detector 0.5 m, 55 µm pixels, arm at 2θ_B of
    ``d_A``, γ = 0); this returns the same numbers (the IOC publishes no geometry PVs).

    Parameters
    ----------
    energy_eV : float
        Photon energy, eV.
    frame_shape : (rows, cols)
        Detector crop shape.
    d_A : float
        d-spacing the detector arm is set to, Å.

    Returns
    -------
    dict
        :data:`DETECTOR_GEOMETRY_KEYS`.
    """
    from strainstream.sim.sxdm_frames import SXDMParticle, simulate_sxdm

    sim = simulate_sxdm(SXDMParticle(ny=4, nx=4, d_mean_A=float(d_A)), energy_keV=energy_eV / 1000.0,
                        shape=tuple(int(n) for n in frame_shape), n_theta=1, drift_step_nm=0.0,
                        noise=False)
    return {k: float(sim.metadata[k]) for k in DETECTOR_GEOMETRY_KEYS}


def _frame_shape(detector: Any):
    """Rows/cols of the detector frame: an areaDetector's ``cam1:ArraySizeY_RBV/X_RBV``, or an
    in-process detector's ``_frame_shape`` (generator: yields plan messages)."""
    if hasattr(detector, "cam"):
        return (yield from ad_frame_shape(detector))
    shape = getattr(detector, "_frame_shape", None)
    if shape is None:
        raise ValueError(f"{detector.name}: frame shape unknown; pass geometry= with the detector "
                         f"geometry keys {list(DETECTOR_GEOMETRY_KEYS)}")
    return tuple(int(n) for n in shape)


def _check_geometry(geometry: Mapping[str, Any]) -> dict[str, float]:
    missing = [k for k in DETECTOR_GEOMETRY_KEYS if k not in geometry]
    if missing:
        raise ValueError(f"geometry lacks {missing}; give all of {list(DETECTOR_GEOMETRY_KEYS)} "
                         "(or none, for the simulated endstation's detector)")
    out = {k: float(geometry[k]) for k in DETECTOR_GEOMETRY_KEYS}
    if not all(math.isfinite(v) for v in out.values()):
        raise ValueError(f"geometry values must be finite numbers, got {out}")
    return out


def _raster_grid(es: Any, theta_center_deg: float, theta_half_range_deg: float, n_theta: int,
                 x_center_um: float, y_center_um: float, nx: int, ny: int, step_nm: float,
                 x_margin_um: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Checked rocking angles and raster positions (µm) of an SXDM map; every motor's soft
    limits are checked (x with ``x_margin_um`` beyond both ends) before anything moves."""
    if n_theta < 1 or nx < 1 or ny < 1:
        raise ValueError(f"n_theta, nx and ny must be >= 1, got {n_theta}, {nx}, {ny}")
    if not step_nm > 0:
        raise ValueError(f"step_nm must be > 0, got {step_nm}")
    if not theta_half_range_deg >= 0 or (n_theta > 1 and theta_half_range_deg == 0):
        raise ValueError(f"theta_half_range_deg must be > 0 for {n_theta} angles, got {theta_half_range_deg}")
    thetas = (np.linspace(theta_center_deg - theta_half_range_deg, theta_center_deg + theta_half_range_deg,
                          n_theta) if n_theta > 1 else np.array([float(theta_center_deg)]))
    thetas = np.round(thetas, 6)  # what the motor record holds
    xs = raster_positions(x_center_um, nx, step_nm)
    ys = raster_positions(y_center_um, ny, step_nm)
    x_ends = np.array([xs.min() - x_margin_um, xs.max() + x_margin_um])
    for mot, pos in ((es.theta, thetas), (es.sample_x, x_ends), (es.sample_y, ys)):
        if hasattr(mot, "check_value"):  # refuse the plan before moving anything
            for p in (pos.min(), pos.max()):
                mot.check_value(float(p))
    return thetas, xs, ys


def _energy_and_geometry(detector: Any, es: Any, geometry: Mapping[str, Any] | None):
    """The photon energy (eV, read) and the detector geometry (given, else the simulated
    endstation's for that energy and the detector's crop). Generator: yields plan messages."""
    energy_eV = float((yield from bps.rd(es.energy.readback if hasattr(es.energy, "readback") else es.energy)))
    if geometry is None:
        shape = yield from _frame_shape(detector)
        return energy_eV, simulated_detector_geometry(energy_eV, shape)
    return energy_eV, _check_geometry(geometry)


def _sxdm_metadata(md: dict[str, Any] | None, plan_name: str, detector: Any, es: Any, energy_eV: float,
                   geo: Mapping[str, float], thetas: np.ndarray, *, nx: int, ny: int, step_nm: float,
                   x_center_um: float, y_center_um: float, snake: bool, hkl: tuple[int, int, int],
                   keys: Mapping[str, str], fluorescence: Any = None, **extra: Any) -> dict[str, Any]:
    """The start document of an SXDM map (the keys the live analysis reads)."""
    return base_metadata(
        "sxdm", md,
        plan_name=plan_name,
        detectors=[detector.name] + ([fluorescence.name] if fluorescence is not None else []),
        motors=[es.theta.name, es.sample_x.name, es.sample_y.name],
        num_points=int(len(thetas) * ny * nx),
        energy_keV=energy_eV / 1000.0,
        **geo,
        step_nm=float(step_nm),
        hkl=[int(h) for h in hkl],
        theta_deg=[float(t) for t in thetas],
        raster={"nx": int(nx), "ny": int(ny), "step_nm": float(step_nm),
                "x_center_um": float(x_center_um), "y_center_um": float(y_center_um),
                "snake": bool(snake), "order": "theta, iy, ix"},
        sxdm_keys={"frames": f"{detector.name}_image", **keys,
                   "fluorescence": fluorescence.name if fluorescence is not None else None},
        **extra,
    )


def sxdm_map(
    detector: Readable,
    es: Readable,
    *,
    theta_center_deg: float,
    theta_half_range_deg: float = 1.0,
    n_theta: int = 41,
    x_center_um: float,
    y_center_um: float,
    nx: int,
    ny: int,
    step_nm: float = 50.0,
    snake: bool = True,
    fluorescence: Readable | None = None,
    beam: Readable | None = None,
    open_shutter: bool = True,
    geometry: Mapping[str, Any] | None = None,
    hkl: tuple[int, int, int] = (0, 0, 3),
    min_ring_current_mA: float = 50.0,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Rocking-angle × 2-D raster SXDM map of one particle (live strain and rotation maps).

    For each of ``n_theta`` rocking angles spread evenly over ``theta_center_deg`` ±
    ``theta_half_range_deg`` the sample is rastered over ``ny`` × ``nx`` points ``step_nm``
    apart around (``x_center_um``, ``y_center_um``) and one detector frame is taken per point.
    The live worker turns the frames into d-spacing strain and θxy/θxz rotation maps that
    sharpen after each rocking angle (``strainstream.callbacks.sxdm``).

    Parameters
    ----------
    detector : area detector
        The SXDM pixel-array detector (frames written to HDF5 by the detector).
    es : Endstation
        Endstation motors: ``es.theta`` (deg), ``es.sample_x``, ``es.sample_y`` (µm) and
        ``es.energy`` (eV, read, not moved).
    theta_center_deg, theta_half_range_deg : float
        Rocking range centre and half width, degrees (e.g. the (003) Bragg angle from
        :func:`find_bragg` and 1.0).
    n_theta : int
        Number of rocking angles (>= 1).
    x_center_um, y_center_um : float
        Raster centre, µm.
    nx, ny : int
        Raster points along x and y (>= 1).
    step_nm : float
        Raster step, nm (> 0).
    snake : bool
        Alternate the x direction line by line (shorter moves); else every line runs +x.
    fluorescence : readable, optional
        Fluorescence/ROI channel read with every frame (for a particle mask).
    beam : Beam device, optional
        Enables the beam suspenders (ring current, shutter): the plan pauses and re-takes the
        interrupted point.
    open_shutter : bool
        With ``beam``: open the photon shutter before the map (a closed one would suspend the
        run at once) and leave it as found when the plan ends, however it ends.
    geometry : mapping, optional
        Detector geometry (:data:`DETECTOR_GEOMETRY_KEYS`: distance_m, pixel_size_um,
        delta_deg, gamma_deg, cen_row, cen_col). Default: the simulated endstation's SXDM
        detector (:func:`simulated_detector_geometry` at the current energy and crop).
    hkl : (h, k, l)
        The reflection (nominally along the sample's +x).
    min_ring_current_mA : float
        Ring-current floor of the suspenders.
    md : dict, optional
        Extra start-document metadata.
    """
    thetas, xs, ys = _raster_grid(es, theta_center_deg, theta_half_range_deg, n_theta, x_center_um,
                                  y_center_um, nx, ny, step_nm)

    sig_it = _IndexSignal(name="sxdm_itheta", value=0)
    sig_iy = _IndexSignal(name="sxdm_iy", value=0)
    sig_ix = _IndexSignal(name="sxdm_ix", value=0)
    readables = [detector, es.theta, es.sample_x, es.sample_y, sig_it, sig_iy, sig_ix]
    if fluorescence is not None:
        readables.append(fluorescence)

    def body():
        energy_eV, geo = yield from _energy_and_geometry(detector, es, geometry)
        _md = _sxdm_metadata(
            md, "sxdm_map", detector, es, energy_eV, geo, thetas, nx=nx, ny=ny, step_nm=step_nm,
            x_center_um=x_center_um, y_center_um=y_center_um, snake=snake, hkl=hkl,
            keys={"theta": es.theta.name, "x": es.sample_x.name, "y": es.sample_y.name,
                  "itheta": sig_it.name, "iy": sig_iy.name, "ix": sig_ix.name},
            fluorescence=fluorescence)
        yield from bps.open_run(md=_md)
        for it, th in enumerate(thetas):
            yield from bps.checkpoint()
            yield from bps.mv(es.theta, float(th), sig_it, it)
            for iy in range(ny):
                order = range(nx - 1, -1, -1) if snake and iy % 2 else range(nx)
                for k, ix in enumerate(order):
                    yield from bps.checkpoint()  # a suspended point is taken again
                    if k == 0:  # line start: move y as well
                        yield from bps.mv(es.sample_x, float(xs[ix]), es.sample_y, float(ys[iy]),
                                          sig_iy, iy, sig_ix, ix)
                    else:
                        yield from bps.mv(es.sample_x, float(xs[ix]), sig_ix, ix)
                    yield from bps.trigger_and_read(readables)
        yield from bps.close_run()

    stage = [detector] + ([fluorescence] if fluorescence is not None and hasattr(fluorescence, "stage") else [])
    yield from preflight([detector], int(n_theta * ny * nx))  # DataDirError before any document
    plan = bpp.stage_wrapper(body(), stage)
    if beam is None:
        return (yield from plan)
    plan = bpp.suspend_wrapper(plan, beam_suspenders(beam, min_ring_current_mA=min_ring_current_mA))
    if not open_shutter:
        return (yield from plan)
    was_open = (yield from bps.rd(beam.shutter.status)) == getattr(beam.shutter, "open_status", "Open")
    if not was_open:  # before the suspenders watch it, or the closed shutter suspends the run
        yield from _open_shutter(beam)

    def restore_shutter():
        if not was_open:  # the shutter as it was found: no dose on the particle after the map
            yield from bps.mv(beam.shutter, "close")

    return (yield from bpp.finalize_wrapper(plan, restore_shutter()))


def sxdm_fly_map(
    detector: Readable,
    es: Readable,
    *,
    theta_center_deg: float,
    theta_half_range_deg: float = 1.0,
    n_theta: int = 41,
    x_center_um: float,
    y_center_um: float,
    nx: int,
    ny: int,
    step_nm: float = 50.0,
    period_s: float = 0.002,
    snake: bool = True,
    geometry: Mapping[str, Any] | None = None,
    hkl: tuple[int, int, int] = (0, 0, 3),
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Fly-scanned SXDM map: every raster line is one triggered series of ``nx`` frames.

    Same raster, rocking angles, metadata and event keys as :func:`sxdm_map` (the live
    analysis cannot tell the two apart), but ``sample_x`` moves continuously through each
    line at ``step_nm / period_s`` while the detector, in ``TriggerMode`` External, takes one
    frame every ``period_s`` from the moment the move starts (the motion controller's output
    triggers it). The move starts half a step before the first raster point, so frame ``i`` is
    exposed over raster point ``i`` (± half a step). Each line is recorded as one StreamDatum
    range and one event page (:class:`strainstream.devices.flyers.FlyLine`): two documents
    per line instead of one event and one datum per frame. Between two lines of a snake only
    ``sample_y`` moves; meanwhile the detector arms and the last line's documents go out, and
    the next line's motion starts when ``sample_y`` has arrived.

    Parameters
    ----------
    detector : area detector
        The SXDM detector (areaDetector with an HDF5 plugin; frames written by the IOC).
    es : Endstation
        ``es.theta``, ``es.sample_x`` (flown), ``es.sample_y``, ``es.energy`` (read).
    theta_center_deg, theta_half_range_deg, n_theta, x_center_um, y_center_um, nx, ny, step_nm, snake, geometry, hkl, md
        As for :func:`sxdm_map`.
    period_s : float
        Frame period (= exposure), s (> 0); the line speed is ``step_nm / period_s``.

    Notes
    -----
    The plan sets the detector's ``TriggerMode``, ``ImageMode``, ``NumImages``,
    ``AcquirePeriod``, ``AcquireTime`` and ``sample_x``'s ``VELO``, and puts back what it
    found when it ends, however it ends (a setting whose IOC died is left). A line whose frames
    did not all reach the file (:class:`~strainstream.devices.flyers.FlyLineError`) or whose
    detector IOC died (:class:`~strainstream.devices._ioc.IOCNotAnswering`, at once) fails the
    run; the frames that reached the file are recorded first, and the analysis lists the line
    as incomplete. There are no beam suspenders: a line cannot be paused.
    """
    from strainstream.devices.flyers import FlyLine

    if not (period_s > 0 and math.isfinite(period_s)):
        raise ValueError(f"period_s must be > 0, got {period_s}")
    half = step_nm / 2000.0  # half a step, µm: the run-up before the first point
    thetas, xs, ys = _raster_grid(es, theta_center_deg, theta_half_range_deg, n_theta, x_center_um,
                                  y_center_um, nx, ny, step_nm, x_margin_um=half)
    velocity = step_nm / 1000.0 / period_s

    keys = {"theta": es.theta.name, "x": es.sample_x.name, "y": es.sample_y.name,
            "itheta": "sxdm_itheta", "iy": "sxdm_iy", "ix": "sxdm_ix"}
    flyer = FlyLine(detector, es.sample_x, {keys["theta"]: "number", keys["x"]: "number",
                                            keys["y"]: "number", keys["itheta"]: "integer",
                                            keys["iy"]: "integer", keys["ix"]: "integer"},
                    name=f"{detector.name}_fly")
    cam = detector.cam
    settings = [(cam.trigger_mode, "External"), (cam.image_mode, "Multiple"), (cam.num_images, int(nx)),
                (cam.acquire_period, float(period_s)), (cam.acquire_time, float(period_s))]
    found: list[tuple[Any, Any]] = []

    def body():
        energy_eV, geo = yield from _energy_and_geometry(detector, es, geometry)
        _md = _sxdm_metadata(
            md, "sxdm_fly_map", detector, es, energy_eV, geo, thetas, nx=nx, ny=ny, step_nm=step_nm,
            x_center_um=x_center_um, y_center_um=y_center_um, snake=snake, hkl=hkl, keys=keys,
            fly={"period_s": float(period_s), "velocity_um_s": float(velocity),
                 "frames_per_line": int(nx), "trigger": "External (motion start)"})
        settings.append((es.sample_x.velocity, velocity))  # the line speed, also between lines
        for sig, _ in settings:
            found.append((sig, (yield from bps.rd(sig))))
        yield from bps.mv(*[x for pair in settings for x in pair])
        yield from bps.open_run(md=_md)
        yield from bps.declare_stream(flyer, name="primary", collect=True)
        x_at = None  # where the last line left sample_x (snake: the next line's start)
        pending = False  # the last line ended and its documents are still to be collected

        def collect_pending():
            nonlocal pending
            if pending:
                yield from bps.collect(flyer, name="primary")
                pending = False

        for it, th in enumerate(thetas):
            yield from collect_pending()
            yield from bps.checkpoint()
            yield from bps.mv(es.theta, float(th))
            theta_rbv = float((yield from bps.rd(es.theta.readback if hasattr(es.theta, "readback") else es.theta)))
            for iy in range(ny):
                order = np.arange(nx - 1, -1, -1) if snake and iy % 2 else np.arange(nx)
                direction = -1.0 if order[0] > order[-1] else 1.0
                start, stop = xs[order[0]] - direction * half, xs[order[-1]] + direction * half
                turn: tuple = ()
                if x_at is not None and abs(x_at - start) <= 1e-9:  # already there: only y moves
                    # the turnaround: while sample_y steps, the last line's documents go out and
                    # the detector arms (sample_x, which triggers it, does not move meanwhile)
                    turn = ((yield from bps.abs_set(es.sample_y, float(ys[iy]))),)
                yield from collect_pending()
                yield from bps.checkpoint()
                if not turn:
                    yield from bps.mv(es.sample_x, float(start), es.sample_y, float(ys[iy]))
                flyer.prepare(stop=float(stop), n=int(nx), period_s=float(period_s), start_after=turn, rows={
                    keys["theta"]: [theta_rbv] * nx, keys["x"]: [float(xs[i]) for i in order],
                    keys["y"]: [float(ys[iy])] * nx, keys["itheta"]: [it] * nx,
                    keys["iy"]: [iy] * nx, keys["ix"]: [int(i) for i in order]})
                try:
                    yield from bps.kickoff(flyer, wait=True)
                    yield from bps.complete(flyer, wait=True)
                except Exception:  # a failed line's frames that reached the file are recorded too
                    yield from bps.collect(flyer, name="primary")
                    raise
                pending = True
                x_at = float(stop)
        yield from collect_pending()
        yield from bps.close_run()

    def restore():
        # the detector's and motor's settings as the plan found them; one that cannot be put
        # back (its IOC died: the reason the run failed) does not hide that reason
        for sig, value in found:
            if not getattr(sig, "connected", True):  # no put to a dead IOC (its set would fail
                logger.warning("sxdm_fly_map: %s not put back to %r: disconnected", sig.name, value)
                continue  # in a thread, and that error would replace the run's own)
            try:
                yield from bps.mv(sig, value)
            except Exception as exc:
                logger.warning("sxdm_fly_map: %s not put back to %r: %s", sig.name, value, exc)

    yield from preflight([detector], int(n_theta * ny * nx))
    return (yield from bpp.finalize_wrapper(bpp.stage_wrapper(body(), [detector]), restore()))


def find_bragg(
    detector: Readable,
    es: Readable,
    *,
    theta_center_deg: float | None = None,
    half_range_deg: float = 1.0,
    num: int = 21,
    x_um: float | None = None,
    y_um: float | None = None,
    move: bool = False,
    md: dict[str, Any] | None = None,
) -> MsgGenerator:
    """Coarse θ scan at one sample position; return (and print) the θ of maximum intensity.

    A console helper before :func:`sxdm_map`; the θ is printed, and returned as the plan's
    result (``RunEngine(call_returns_result=True)``: ``RE(find_bragg(sxdm, es)).plan_result``).
    The frames' total counts are read back from the detector's HDF5 file at the end (a few
    small frames: light enough for the RunEngine process). The run is tagged
    ``experiment="sxdm_alignment"`` (no live analysis).

    Parameters
    ----------
    detector : area detector
        The SXDM detector.
    es : Endstation
        Endstation motors (``theta``, ``sample_x``, ``sample_y``).
    theta_center_deg : float, optional
        Centre of the scan, degrees; default the current θ.
    half_range_deg : float
        Half width of the scan, degrees.
    num : int
        Number of angles (>= 3).
    x_um, y_um : float, optional
        Sample position, µm (default: where it is).
    move : bool
        Leave θ at the maximum found (else θ goes back to where it was).
    md : dict, optional
        Extra metadata.

    Returns
    -------
    float
        θ (degrees) of the frame with the most counts (background-corrected with the
        weakest frame).
    """
    if num < 3:
        raise ValueError(f"num must be >= 3, got {num}")
    found: dict[str, Any] = {"resource": None, "datum": [], "theta": []}

    def collect(name, doc):
        if name == "stream_resource":
            found["resource"] = doc
        elif name == "stream_datum":
            found["datum"].append(doc)
        elif name == "event" and es.theta.name in doc["data"]:
            found["theta"].append(float(doc["data"][es.theta.name]))

    def body():
        th0 = yield from bps.rd(es.theta.readback if hasattr(es.theta, "readback") else es.theta)
        center = float(th0) if theta_center_deg is None else float(theta_center_deg)
        if x_um is not None or y_um is not None:
            args = []
            if x_um is not None:
                args += [es.sample_x, float(x_um)]
            if y_um is not None:
                args += [es.sample_y, float(y_um)]
            yield from bps.mv(*args)
        thetas = np.round(np.linspace(center - half_range_deg, center + half_range_deg, num), 6)
        _md = base_metadata("sxdm_alignment", md, plan_name="find_bragg", num_points=int(num),
                            detectors=[detector.name], motors=[es.theta.name],
                            theta_deg=[float(t) for t in thetas])
        yield from bps.open_run(md=_md)
        for th in thetas:
            yield from bps.mv(es.theta, float(th))
            yield from bps.trigger_and_read([detector, es.theta])
        yield from bps.close_run()
        totals = _frame_totals(found)
        if totals.size != len(found["theta"]) or totals.size == 0:
            raise RuntimeError(f"find_bragg: got {totals.size} frames for {len(found['theta'])} angles")
        best = float(np.asarray(found["theta"])[int(np.argmax(totals))])
        peak = float(totals.max() - totals.min())
        print(f"find_bragg: maximum at theta = {best:.4f} deg ({peak:.0f} counts above the weakest frame; "
              f"scan {thetas[0]:.4f}..{thetas[-1]:.4f} deg)")
        yield from bps.mv(es.theta, best if move else float(th0))
        return best

    # an areaDetector's Resource/Datum as StreamResource/StreamDatum (each event's own frame)
    from strainstream.asset_docs import DatumToStream

    plan = bpp.subs_wrapper(bpp.stage_wrapper(body(), [detector]), DatumToStream(collect))
    return (yield from plan)


def _frame_totals(found: dict[str, Any]) -> np.ndarray:
    """Total counts of the frames named by the collected StreamResource/StreamDatum documents."""
    import h5py

    res = found["resource"]
    if res is None:
        return np.zeros(0)
    uri = res["uri"]
    path = uri[len("file://localhost"):] if uri.startswith("file://localhost") else uri.removeprefix("file://")
    idx = sorted(i for d in found["datum"] for i in range(d["indices"]["start"], d["indices"]["stop"]))
    with h5py.File(path, "r", swmr=True, locking=False) as f:
        ds = f[res["parameters"]["dataset"]]
        if idx and max(idx) >= ds.shape[0]:
            ds.refresh()
        return np.array([float(ds[i].sum(dtype=np.float64)) for i in idx])
