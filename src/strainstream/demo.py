"""``strainstream demo``: the whole data path on one machine.

Starts the embedded tiled server and a worker process, runs a simulated experiment with a
RunEngine that streams to tiled, waits until the worker has analysed every event, and prints
a summary. Data stays in the data directory afterwards (``strainstream results UID
--data-dir DIR`` and ``strainstream replay UID --data-dir DIR`` work without a server).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any

from strainstream.workerproc import WorkerProcess

__all__ = ["EXPERIMENTS", "run_demo", "wait_for_results"]

#: demo experiments; those in IOC_EXPERIMENTS run on the simulated beamline's IOCs
IOC_EXPERIMENTS = ("operando_xrd", "sxdm", "txm_xanes", "study")
EXPERIMENTS = (*IOC_EXPERIMENTS, "frame_series")



def wait_for_results(root, uid: str, n_events: int, timeout_s: float = 60.0) -> dict[str, Any]:
    """Poll tiled until every analysis of ``uid`` is complete; return the results document."""
    from strainstream.callbacks.sinks import read_results

    deadline = time.monotonic() + timeout_s
    doc: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(KeyError):
            doc = read_results(root, uid)
            if doc["analyses"] and all(a["status"] == "complete" for a in doc["analyses"].values()):
                return doc
        time.sleep(0.2)
    raise TimeoutError(f"the worker did not finish run {uid} within {timeout_s:.0f} s "
                       f"(have: {({k: v['n_rows'] for k, v in doc.get('analyses', {}).items()})} of {n_events})")


#: nominal geometry of the simulated 2048² / 200 µm flat panel as a scientist knows it before
#: calibrating (distance and beam centre rounded); the CeO2 calibration refines it
NOMINAL_XRD_GEOMETRY = {"distance_m": 1.0, "poni1_m": 0.2045, "poni2_m": 0.2055, "rot1": 0.0,
                        "rot2": 0.0, "rot3": 0.0, "wavelength_A": 0.1665}


class Interrupted(KeyboardInterrupt):
    """The user stopped the demo (Ctrl-C, SIGTERM, SIGHUP); the run in progress was aborted."""


def run_plan(session, plan) -> tuple[str, ...]:
    """``session.RE(plan)``, but a Ctrl-C (or SIGTERM/SIGHUP, see :func:`signals_interrupt`)
    aborts the run cleanly instead of leaving the RunEngine paused: the plan's cleanup runs
    (detectors unstaged, the cell stopped), the run is closed with ``exit_status="abort"``,
    the buffered documents go to tiled or the spool, then :class:`Interrupted` is raised."""
    from bluesky.utils import RunEngineInterrupted

    try:
        return session.RE(plan)
    except RunEngineInterrupted:
        if session.RE.state != "idle":
            import logging

            quiet = logging.getLogger("bluesky")  # it logs the RequestAbort as a traceback
            level, quiet.level = quiet.level, logging.CRITICAL
            try:
                session.RE.abort("interrupted by the user (Ctrl-C or SIGTERM)")
            finally:
                quiet.setLevel(level)
        session.writer.wait_drained(30)
        raise Interrupted("the run in progress was aborted (exit_status abort) and stored") from None


class _Received:
    """Which stop signal arrived (``signum``; SIGINT unless SIGTERM/SIGHUP came first)."""

    signum: int = 2


@contextlib.contextmanager
def signals_interrupt():
    """SIGTERM and SIGHUP (a closed terminal, a supervisor) stop the demo as Ctrl-C does;
    yields a record whose ``signum`` says which signal stopped it (exit code 128 + signum)."""
    import signal

    received = _Received()

    def _as_sigint(signum, frame):
        received.signum = signum
        os.kill(os.getpid(), signal.SIGINT)  # the RunEngine (or Python) handles it as Ctrl-C

    previous = {s: signal.signal(s, _as_sigint) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _say(quiet: bool):
    return (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))


def _frame_series(session, data_dir, frames, delay_s, say) -> str:
    from strainstream.datadir import detector_dir
    from strainstream.devices.detectors import sim_frame_detector
    from strainstream.plans.frames import frame_series

    det = sim_frame_detector("det", detector_dir(data_dir), frame_shape=(512, 512))
    (uid,) = run_plan(session, frame_series([det], num=frames, delay_s=delay_s,
                                     md={"sample": "simulated powder rings"}))
    return uid


def calibrate_from_ceo2(session, det, frame_size: int, say, sim=None) -> dict[str, Any]:
    """Record a CeO2 frame (its own run, ``experiment="calibration"``) and calibrate on it.

    Returns the geometry dict incl. ``instrument_fwhm_A_inv`` (the analysis' calibration).
    """
    import bluesky.plans as bp
    import h5py

    from strainstream.devices._ioc import read_text
    from strainstream.xrd import calibrate

    sim.sample.put("CeO2", wait=True)  # the simulated sample changer
    try:
        (uid,) = run_plan(session, bp.count([det], md={"experiment": "calibration", "calibrant": "CeO2",
                                                 "sample": "CeO2 NIST SRM 674b"}))
    finally:
        sim.sample.put("cell", wait=True)
    path = read_text(det.file_name)
    with h5py.File(path, "r", swmr=True, locking=False) as f:
        frame = f["/entry/data/data"][-1]
    pixel_um = 200.0 * 2048 / frame_size
    approx = dict(NOMINAL_XRD_GEOMETRY, pixel_size_um=pixel_um, shape=[frame_size, frame_size])
    geometry = calibrate(frame, approx, measure_width=True)
    say(f"CeO2 calibration (run {uid[:8]}): distance {geometry['distance_m']:.4f} m, beam centre "
        f"({geometry['poni1_m'] * 1e3:.3f}, {geometry['poni2_m'] * 1e3:.3f}) mm, instrumental FWHM "
        f"{geometry['instrument_fwhm_A_inv']:.4f} 1/Å")
    return geometry


def _operando(session, devices, data_dir, *, frame_size, rate_mA_g, duration_s, frame_interval_s,
              say, geometry: dict[str, Any] | None = None) -> str:
    """Charge the cycler's cell with XRD frames; a CeO2 calibration first unless ``geometry``."""
    from strainstream.plans.xrd import operando_xrd

    cycler, det, beam = devices["cycler"], devices["xrd"], devices["beam"]
    cycler.reset_cell().wait(30)
    # simulated seconds per wall second so that the charge (~240 mAh/g) takes duration_s
    charge_s = 240.0 / rate_mA_g * 3600.0
    cycler.accel.put(charge_s / duration_s, wait=True)
    if geometry is None:
        geometry = calibrate_from_ceo2(session, det, frame_size, say, sim=devices["xrd_sim"])
    preset = cycler.preset.get()
    say(f"charging the simulated {preset} cell at {rate_mA_g:g} mA/g "
        f"(time x{charge_s / duration_s:.0f}), one frame every {frame_interval_s:g} s ...")
    # what was simulated, for the truth `strainstream report` states beside each figure
    md = {"simulation": {"cell_preset": preset}}
    (uid,) = run_plan(session, operando_xrd(det, cycler, calibration=geometry, rate_mA_g=rate_mA_g,
                                     frame_interval_s=frame_interval_s, max_frames=10_000,
                                     material=preset, beam=beam, md=md))
    return uid


def _sxdm(session, devices, *, raster: int, angles: int, say, material: str = "SC-NM91") -> str:
    """A raster x rocking map of the endstation IOC's whole particle (``raster`` points a side)."""
    from strainstream.devices.ioc.endstation import theta_bragg_deg
    from strainstream.plans.sxdm import sxdm_map

    det, es, beam = devices["sxdm"], devices["es"], devices["beam"]
    step_nm = 50.0  # the IOC's particle raster: point (iy, ix) sits at (iy, ix) x 50 nm
    centre_um = (raster - 1) / 2 * step_nm / 1000.0
    theta = round(theta_bragg_deg(float(es.energy.position)), 4)
    say(f"SXDM map of one simulated particle: {raster} x {raster} raster (50 nm step) x {angles} "
        f"rocking angles around θ = {theta:.3f}° ({raster * raster * angles} frames) ...")
    (uid,) = run_plan(session, sxdm_map(det, es, theta_center_deg=theta, theta_half_range_deg=0.6,
                                        n_theta=angles, x_center_um=centre_um, y_center_um=centre_um,
                                        nx=raster, ny=raster, step_nm=step_nm, beam=beam,
                                        md={"material": material,
                                            "sample": f"{material} charged particle (simulated)",
                                            # the endstation IOC's particle (its default state)
                                            "simulation": {"sxdm_particle": {
                                                "material": material, "state": "charged",
                                                "ny": raster, "nx": raster}}}))
    return uid


def txm_energy_grid(n: int) -> list[float]:
    """``n`` energies from 8300 to 8400 eV as a TXM-XANES scan takes them (eV, rounded to 0.1).

    From 20 points on: 8 pre-edge points 5 eV apart (8300-8335), 4 post-edge points 10 eV
    apart (8370-8400) and the other ``n - 12`` evenly across the edge and white line
    (8336-8365 eV: 1 eV steps at ``n = 42``, the default). Fewer points: evenly spaced.
    """
    import numpy as np

    if n < 20:
        return np.round(np.linspace(8300.0, 8400.0, n), 1).tolist()
    fine = np.linspace(8336.0, 8365.0, n - 12)
    return np.round(np.r_[np.arange(8300.0, 8336.0, 5.0), fine, np.arange(8370.0, 8401.0, 10.0)], 1).tolist()


def _txm(session, devices, *, energies: int, say, material: str = "NM91") -> str:
    """A TXM energy scan across the Ni K edge (8.30 to 8.40 keV, :func:`txm_energy_grid`)."""
    import numpy as np

    from strainstream.plans.xanes import txm_xanes

    cam, es, beam = devices["txm"], devices["es"], devices["beam"]
    grid = txm_energy_grid(energies)
    devices["txm_sim"].beam_gate.put(1, wait=True)  # darks (shutter closed) see no photons
    fine = min(np.diff(grid)) if len(grid) > 1 else 0.0
    say(f"TXM-XANES scan of a simulated particle set: {energies} energies {grid[0]:.0f} to "
        f"{grid[-1]:.0f} eV ({fine:.3g} eV steps across the edge), zone plate refocused at each ...")
    (uid,) = run_plan(session, txm_xanes(cam, es, energies_eV=grid, n_darks=3, sample_out_mm=1.0,
                                         beam=beam, md={"material": material,
                                                        "sample": f"{material} particles (simulated)",
                                                        # particle_sample() on the camera's frame
                                                        "simulation": {"txm_sample": {}}}))
    return uid


def finish_run(root, uid: str, say, timeout_s: float = 120.0) -> tuple[int, int, dict[str, Any]]:
    """Wait until the worker has analysed run ``uid``: (events recorded, analysed, results)."""
    # unique seq_nums: TiledWriter may store a row twice when it retries an append whose
    # answer was lost under load (it warns); the worker analyses each event once
    recorded = len(set(root[uid]["primary"]["seq_num"].read().tolist()))
    say(f"run {uid} recorded {recorded} events; waiting for the worker ...")
    results = wait_for_results(root, uid, recorded, timeout_s=timeout_s)
    return recorded, min(a["n_rows"] for a in results["analyses"].values()), results


def _dashboard_hint(data_dir: Path, say) -> None:
    """Say where the dashboard is when one runs for this data directory."""
    try:
        from strainstream.dashboard import running_dashboard
    except ImportError:  # pragma: no cover - the dashboard is part of the package
        return
    url = running_dashboard(data_dir)
    if url:
        say(f"dashboard: {url} (follows this run live)")
    else:
        say(f"live view in a browser: strainstream dashboard --data-dir {data_dir} (another terminal)")


def _study_summary(study: dict[str, Any], uri: str, data_dir: Path, say) -> dict[str, Any]:
    from strainstream.study import format_comparisons, json_safe

    runs = study["runs"]
    summary = {"experiment": "study", "tiled_uri": uri, "data_dir": str(data_dir),
               "events_recorded": sum(r["events_recorded"] for r in runs),
               "events_analysed": sum(min(r["events_analysed"], r["events_recorded"]) for r in runs),
               "runs": runs, "comparisons": study["comparisons"], "report": study.get("report")}
    say("study runs:")
    for r in runs:
        say(f"  {r['uid'][:8]}  {r['experiment']:12} {r['material']:8} events recorded "
            f"{r['events_recorded']:4d}, analysed {r['events_analysed']:4d}")
    say(format_comparisons(study["comparisons"]))
    if study.get("report"):
        say(f"report: {study['report']['html']}\n        {study['report']['pdf']}")
    say(f"next: strainstream runs --data-dir {data_dir}\n"
        f"      strainstream plot UID --data-dir {data_dir}\n"
        f"      strainstream report --material SC-NM91 --data-dir {data_dir}")
    return json_safe(summary)  # NaN (a figure a run could not give) -> null in --json


def _fmt(value: Any) -> str:
    """A summary value for people: floats to 4 significant digits (energies in eV keep two
    decimals: 8350.77, not 8351)."""
    if not isinstance(value, float):
        return str(value)
    return f"{value:.2f}" if abs(value) >= 1000 else f"{value:.4g}"


def _close_channel_access() -> None:
    import epics

    epics.ca.finalize_libca()


def run_demo(data_dir: str | os.PathLike, *, experiment: str = "operando_xrd", frames: int = 20,
             delay_s: float = 0.2, frame_size: int = 1024, rate_mA_g: float = 200.0,
             duration_s: float = 60.0, frame_interval_s: float = 1.0,
             raster: int = 6, angles: int = 7, energies: int = 42,
             quiet: bool = False) -> dict[str, Any]:
    """Run the demo; return the summary dict (also printed unless ``quiet``).

    ``experiment="operando_xrd"`` (default): the IOC-backed beamline (cycler + XRD detector
    + beam IOCs on loopback), a CeO2 calibration run, then a constant-current charge of the
    simulated SC-NM91 cell with XRD frames analysed live by the worker.
    ``experiment="sxdm"``: the endstation IOC's particle mapped (``raster`` x ``raster`` x
    ``angles`` frames), strain and rotation maps live; ``experiment="txm_xanes"``: an energy
    scan (``energies`` points across the Ni K edge), white-line map.
    ``experiment="frame_series"``: an in-process detector, frame statistics (no IOCs).
    ``experiment="study"``: :mod:`strainstream.study` (the four cells' charges, two SXDM maps,
    a TXM scan, the study's comparisons, the report in ``DATA_DIR/report/``); the summary then
    has ``runs``, ``comparisons`` and ``report`` (``{"html": PATH, "pdf": PATH}``).
    """
    from strainstream.datadir import detector_dir
    from strainstream.server import TiledServer
    from strainstream.session import make_session

    say = _say(quiet)
    data_dir = Path(data_dir).resolve()
    say(f"strainstream demo ({experiment}): data directory {data_dir}")
    with contextlib.ExitStack() as stack:
        server = stack.enter_context(TiledServer(data_dir))
        say(f"tiled server at {server.uri}")
        devices = None
        if experiment in IOC_EXPERIMENTS:
            from strainstream.beamline import Beamline

            iocs = {"operando_xrd": ("cycler", "beam"),
                    "study": ("cycler", "endstation", "beam")}.get(experiment, ("endstation", "beam"))
            beamline = stack.enter_context(Beamline(
                detector_dir(data_dir), iocs=iocs, xrd_shape=frame_size, log_dir=data_dir / "logs",
                extra_args={"endstation": ["--sxdm-raster", str(raster)]}))
            say("simulated beamline IOCs up: " + ", ".join(f"{k} {v}" for k, v in beamline.addresses.items()))
            devices = beamline.devices()
            for dev in devices.values():
                dev.wait_for_connection(timeout=30)
            stack.callback(_close_channel_access)  # before the IOCs stop: no disconnect noise
        stack.enter_context(WorkerProcess(server.uri, server.api_key, data_dir))
        say("analysis worker running")
        session = make_session(server.uri, server.api_key, progress=not quiet, spool_dir=data_dir / "spool")
        _dashboard_hint(data_dir, say)
        if experiment == "study":
            from strainstream.study import run_study

            study = run_study(session, beamline, devices, server.client(), data_dir,
                              frame_size=frame_size, rate_mA_g=rate_mA_g, duration_s=duration_s,
                              frame_interval_s=frame_interval_s, raster=raster, angles=angles,
                              energies=energies, say=say)
            from strainstream.study import write_study_report

            study["report"] = write_study_report(server.client(), study["runs"], data_dir / "report",
                                                 server_uri=server.uri, data_dir=data_dir, say=say)
            return _study_summary(study, server.uri, data_dir, say)
        if experiment == "operando_xrd":
            uid = _operando(session, devices, data_dir, frame_size=frame_size, rate_mA_g=rate_mA_g,
                            duration_s=duration_s, frame_interval_s=frame_interval_s, say=say)
        elif experiment == "sxdm":
            uid = _sxdm(session, devices, raster=raster, angles=angles, say=say)
        elif experiment == "txm_xanes":
            uid = _txm(session, devices, energies=energies, say=say)
        elif experiment == "frame_series":
            uid = _frame_series(session, data_dir, frames, delay_s, say)
        else:
            raise ValueError(f"unknown demo experiment {experiment!r}: one of {', '.join(EXPERIMENTS)}")
        recorded, analysed, results = finish_run(server.client(), uid, say)
    summary = {
        "uid": uid,
        "experiment": experiment,
        "tiled_uri": server.uri,
        "data_dir": str(data_dir),
        "events_recorded": recorded,
        "events_analysed": analysed,
        "results": {k: v["summary"] for k, v in results["analyses"].items()},
    }
    say(f"run uid        : {uid}\n"
        f"tiled URI      : {server.uri} (server stopped; data kept in {data_dir})\n"
        f"events recorded: {recorded}\nevents analysed: {analysed}")
    xrd = summary["results"].get("operando_xrd")
    if xrd and xrd.get("frames_refined"):
        say(f"lattice: a {xrd['a_first_A']:.4f} -> {xrd['a_last_A']:.4f} Å, c {xrd['c_first_A']:.4f} -> "
            f"max {xrd['c_max_A']:.4f} -> {xrd['c_last_A']:.4f} Å\n"
            f"c contraction from c_max {xrd['c_contraction_pct']:.2f} %, volume change "
            f"{xrd['volume_change_pct']:.2f} %, max Δc between coexisting H2/H3 "
            f"{xrd['max_delta_c_A']:.3f} Å ({xrd['two_phase_frames']} two-phase frames), "
            f"max microstrain {xrd['max_microstrain']:.2e}")
    else:
        for name, s in summary["results"].items():
            scalars = {k: v for k, v in s.items()
                       if isinstance(v, (int, float, str)) and v not in ("", None)}
            say(f"{name}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in scalars.items()))
    say(f"next: strainstream results {uid[:8]} --data-dir {data_dir}\n"
        f"      strainstream plot {uid[:8]} --data-dir {data_dir}")
    return summary
