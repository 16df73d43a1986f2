"""Base document streams for the fuzz tests: one small real run per analysis.

Each run is recorded once per test module with the real plans on simulated devices (no IOCs,
no server), so the documents have exactly the keys the live system writes; the fuzz tests
then corrupt copies of them.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
from bluesky import RunEngine
from ophyd import Signal

from strainstream.devices.detectors import sim_frame_detector
from strainstream.devices.testing import SimBeam, SimStage

Docs = list[tuple[str, dict[str, Any]]]


def _record(plan) -> Docs:
    docs: Docs = []
    RE = RunEngine({})
    RE.subscribe(lambda n, d: docs.append((n, copy.deepcopy(d))))
    RE(plan)
    return docs


def frame_series_run(write_dir: Path, num: int = 5) -> Docs:
    """``frame_series``: 24x20 powder-ring frames."""
    from strainstream.plans.frames import frame_series

    det = sim_frame_detector("det", write_dir, frame_shape=(24, 20))
    return _record(frame_series([det], num=num))


def operando_xrd_run(write_dir: Path, num: int = 3) -> Docs:
    """``operando_xrd`` analysis on a frame series of a charging cell (128² simulator frames)."""
    from strainstream.plans.frames import frame_series
    from strainstream.sim.cell import CoinCell
    from strainstream.sim.xrd_frames import DetectorGeometry, XRDFrameSimulator

    geo = DetectorGeometry.binned(16)
    sim = XRDFrameSimulator(geo)
    volt = Signal(name="cycler_voltage_V", value=0.0)
    cap = Signal(name="cycler_capacity_mAh_g", value=0.0)
    socs = np.linspace(0.1, 0.5, num)

    def source(i):
        cell = CoinCell("SC-NM91", 10.0, soc=float(socs[i % num]))
        volt.put(cell.voltage_V)
        cap.put(cell.capacity_mAh_g)
        return sim.cell_frame(cell, seed=i).image

    det = sim_frame_detector("det", write_dir, frame_source=source, frame_shape=geo.shape)
    inst = 2 * np.pi / geo.wavelength_A * np.radians(sim.instrument_fwhm_2theta_deg)
    calibration = dict(geo.to_dict(), instrument_fwhm_A_inv=inst)
    return _record(frame_series([det, volt, cap], num=num,
                                md={"experiment": "operando_xrd", "calibration": calibration}))


def sxdm_run(write_dir: Path, ny: int = 4, nx: int = 4, n_theta: int = 5) -> Docs:
    """``sxdm_map`` of a simulated particle: n_theta x ny x nx frames of 16x16."""
    from strainstream.plans.sxdm import DETECTOR_GEOMETRY_KEYS, sxdm_map
    from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm

    sim = simulate_sxdm(particle_preset("SC-NM91", "charged", ny=ny, nx=nx, seed=2), shape=(16, 16),
                        n_theta=n_theta, theta_range_deg=1.2, seed=4)
    es = SimStage(name="es")
    es.energy.set(sim.metadata["energy_keV"] * 1000.0)
    step_um = sim.metadata["step_nm"] / 1000.0

    def source(_):
        it = int(np.argmin(np.abs(sim.theta_deg - es.theta.position)))
        iy, ix = round(es.sample_y.position / step_um), round(es.sample_x.position / step_um)
        return sim.frame_at(it, iy, ix)

    det = sim_frame_detector("sxdm", write_dir, frame_source=source, frame_shape=sim.shape)
    return _record(sxdm_map(det, es, theta_center_deg=float(sim.theta_deg[n_theta // 2]),
                            theta_half_range_deg=0.6, n_theta=n_theta,
                            x_center_um=(nx - 1) / 2 * step_um, y_center_um=(ny - 1) / 2 * step_um,
                            nx=nx, ny=ny, step_nm=sim.metadata["step_nm"],
                            geometry={k: sim.metadata[k] for k in DETECTOR_GEOMETRY_KEYS}))


def txm_run(write_dir: Path, n_energies: int = 7) -> Docs:
    """``txm_xanes`` over ``n_energies`` energies across the Ni K edge, 24x24 frames."""
    from strainstream.plans.xanes import txm_xanes
    from strainstream.sim import txm_images as T

    energies = np.linspace(8330.0, 8370.0, n_energies)
    scan = T.simulate_txm_scan(energies, sample=T.particle_sample((24, 24), voxel_size_um=0.2), seed=3)
    es, beam = SimStage(name="es"), SimBeam(name="beam")

    def source(i):
        if beam.shutter.status.get() != "Open":
            return scan.darks + np.random.default_rng([7, i]).normal(0.0, 2.0, scan.darks.shape)
        ie = int(np.argmin(np.abs(energies - es.energy.position)))
        return (scan.flats if abs(es.sample_inout.position) >= 0.5 else scan.stack)[ie]

    cam = sim_frame_detector("txm", write_dir, frame_source=source, frame_shape=scan.stack.shape[1:])
    return _record(txm_xanes(cam, es, energies_eV=energies, n_darks=2, beam=beam,
                             md={"analysis_parameters": {"txm_xanes": {}}}))
