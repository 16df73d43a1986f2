"""What the simulated beamline simulated: the truth a report states next to each figure.

A run comes from the simulated beamline when its start document says so (``simulation``,
recorded by ``strainstream demo``: ``cell_preset`` of the coin cell, ``sxdm_particle``
``{material, state, ny, nx}``, ``txm_sample`` ``{shape}``, the shape being the camera's frame,
i.e. the white-line map's, when not given), or when its detector's
configuration reads ``manufacturer "strainstream"``, ``model "simulated ..."`` (the simulated
IOCs) — the cell preset then from the simulated cycler's ``cycler_preset``, the SXDM particle
from the start document's material and raster (state "charged", the IOC's default), the TXM
sample from the white-line map's shape.

Two truths per figure of merit:

- **simulated** — the property of the simulated material itself: the open-circuit charge
  soc 0 → 1 of :func:`strainstream.sim.cell.contraction_metrics`, the SXDM particle's
  Δd/d standard deviation over the particle, the white-line energies of every voxel of the
  TXM particles;
- **as sampled** — what an exact analysis gives from the frames, pixels or voxels the run
  recorded: the simulator's lattice at each frame's recorded capacity (charge passed =
  bulk state of charge), its cell replayed to the last frame's time for the microstrain,
  the truth maps over the pixels/voxels the analysis kept. The analysis is judged against
  this one; the difference between the two is the sampling (frames every few % of the
  charge, a charge stopped at 4.5 V under current before soc 1, a 4 x 4 raster). The
  rocking-angle sampling of an SXDM map is not modelled: rocking steps much coarser than the
  θxy tilts (the rocking direction) show as a θxy — and strain–θxy correlation — off its truth.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["simulation_of", "sxdm_truth", "txm_truth", "xrd_truth"]

#: the simulated detectors' areaDetector model names start with this
SIMULATED_MODEL = "simulated"


def _simulated_detector(configuration: dict[str, Any]) -> bool:
    for device in configuration.values():
        data = device.get("data", {}) if isinstance(device, dict) else {}
        for key, value in data.items():
            if key.endswith("_cam_model") and str(value).startswith(SIMULATED_MODEL):
                return True
    return False


def simulation_of(start: dict[str, Any], configuration: dict[str, Any],
                  arrays: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """What the simulated beamline simulated for this run, or None (not simulated, or not
    known): ``{"cell_preset": NAME}``, ``{"sxdm_particle": {...}}`` or ``{"txm_sample": {...}}``."""
    recorded = start.get("simulation")
    if isinstance(recorded, dict) and recorded:
        recorded = dict(recorded)
        txm = recorded.get("txm_sample")
        if isinstance(txm, dict) and "shape" not in txm:  # the camera's frame: the map's shape
            wl = (arrays or {}).get("whiteline_eV")
            recorded["txm_sample"] = dict(txm, shape=list(np.shape(wl))) if wl is not None else None
        return recorded
    if not _simulated_detector(configuration):
        return None
    experiment = start.get("experiment")
    if experiment == "operando_xrd":
        preset = (configuration.get("cycler", {}).get("data", {}) or {}).get("cycler_preset")
        return {"cell_preset": str(preset)} if preset else None
    if experiment == "sxdm":
        raster = start.get("raster") or {}
        material = start.get("material")
        if material and raster.get("ny") and raster.get("nx"):
            return {"sxdm_particle": {"material": material, "state": "charged",
                                      "ny": int(raster["ny"]), "nx": int(raster["nx"])}}
        return None
    if experiment == "txm_xanes":
        wl = (arrays or {}).get("whiteline_eV")
        if wl is not None:
            return {"txm_sample": {"shape": list(np.shape(wl))}}
    return None


def _phases_at(preset: str, soc: float) -> list:
    from strainstream.sim.cell import lattice_at_soc

    return sorted(lattice_at_soc(preset, soc), key=lambda p: -p.c_A)  # the refiner's order


def xrd_truth(preset: str, capacity_mAh_g: np.ndarray, cell_time_s: np.ndarray,
              rate_mA_g: float | None) -> dict[str, Any]:
    """Truth of a simulated charge of the ``preset`` cell.

    Parameters
    ----------
    capacity_mAh_g, cell_time_s : ndarray, shape (n,)
        Recorded capacity (mAh/g, since the cell reset: the bulk state of charge × the
        practical capacity) and cycler time (s) of the good refined frames, in order.
    rate_mA_g : float or None
        The constant charging current (mA/g); None: no replay (no microstrain truth).

    Returns
    -------
    dict
        ``simulated``: ``c_contraction_pct``, ``volume_change_pct`` (negative),
        ``max_delta_c_A``, ``two_phase_mAh_g`` ((lo, hi) or None), ``microstrain_top``
        (open circuit at soc 1); ``sampled``: the same from the frames, plus ``n_phases``
        (n,) and ``minority_fraction`` (n,) per frame.
    """
    from strainstream.sim.cell import CoinCell, contraction_metrics
    from strainstream.sim.cell import preset as get_preset

    p = get_preset(preset)
    cap_g = p.practical_capacity_mAh_g
    nominal = contraction_metrics(p.name)
    window = nominal["two_phase_soc"]
    top = _phases_at(p.name, 1.0)
    simulated = {
        "c_contraction_pct": nominal["c_contraction_pct"],
        "volume_change_pct": -nominal["volume_contraction_pct"],
        "max_delta_c_A": nominal["max_delta_c_A"],
        "two_phase_mAh_g": None if window is None else (window[0] * cap_g, window[1] * cap_g),
        "microstrain_top": top[0].microstrain,
    }
    phases = [_phases_at(p.name, float(q) / cap_g) for q in np.asarray(capacity_mAh_g, float)]
    sampled: dict[str, Any] = {"n_phases": np.array([len(ph) for ph in phases]),
                               "minority_fraction": np.array([min(x.fraction for x in ph) if len(ph) == 2 else 0.0
                                                              for ph in phases])}
    if phases:
        c_max = max(x.c_A for ph in phases for x in ph)
        c_last = sum(x.fraction * x.c_A for x in phases[-1])
        v_first = sum(x.fraction * x.volume_A3 for x in phases[0])
        v_last = sum(x.fraction * x.volume_A3 for x in phases[-1])
        two = [(q, ph) for q, ph in zip(capacity_mAh_g, phases, strict=True) if len(ph) == 2]
        sampled.update(
            c_contraction_pct=100.0 * (c_max - c_last) / c_max,
            volume_change_pct=100.0 * (v_last - v_first) / v_first,
            max_delta_c_A=max((ph[0].c_A - ph[1].c_A for _, ph in two), default=0.0),
            two_phase_mAh_g=(float(two[0][0]), float(two[-1][0])) if two else None,
        )
        t_last = float(np.asarray(cell_time_s, float)[-1]) if len(cell_time_s) else math.nan
        sampled["microstrain_top"] = math.nan
        if rate_mA_g and math.isfinite(t_last):
            # the deterministic cell replayed: constant current to 4.5 V, then rest (the plan's
            # charge without CV hold), to the last frame's cycler time
            cell = CoinCell(p.name)
            cell.set_mode("CC", current_mA_g=float(rate_mA_g), v_limit_V=4.5)
            cell.step(t_last)
            sampled["microstrain_top"] = sorted(cell.lattice(), key=lambda x: -x.c_A)[0].microstrain
    return {"simulated": simulated, "sampled": sampled, "practical_capacity_mAh_g": cap_g}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.std(a[ok]) == 0 or np.std(b[ok]) == 0:
        return math.nan
    return float(np.corrcoef(a[ok], b[ok])[0, 1])


def sxdm_truth(particle: dict[str, Any], mask: np.ndarray | None) -> dict[str, Any]:
    """Truth of a simulated SXDM particle (:func:`strainstream.sim.sxdm_frames.particle_preset`).

    ``mask`` (ny, nx; bool): the pixels the analysis kept (None: the particle's).
    Returns ``simulated`` and ``sampled`` dicts of ``strain_std``,
    ``strain_tilt_correlation`` (θxy), ``strain_tilt_xz_correlation``; ``maps``: the truth
    maps (ny, nx).
    """
    from strainstream.sim.sxdm_frames import particle_preset

    pt = particle_preset(particle["material"], particle.get("state", "charged"),
                         ny=int(particle["ny"]), nx=int(particle["nx"]))
    maps = pt.truth()
    w = maps["weight"]
    inside = w > 0.5 * w.max()  # the particle as the simulator normalises its fields over it

    def stats(sel: np.ndarray) -> dict[str, float]:
        s = maps["strain"][sel]
        return {"strain_std": float(np.std(s)) if s.size else math.nan,
                "strain_tilt_correlation": _corr(s, maps["tilt_xy_deg"][sel]),
                "strain_tilt_xz_correlation": _corr(s, maps["tilt_xz_deg"][sel])}

    sel = inside if mask is None or np.shape(mask) != inside.shape else np.asarray(mask, bool)
    return {"simulated": stats(inside), "sampled": stats(sel), "maps": maps}


def txm_truth(sample: dict[str, Any], whiteline_eV: np.ndarray | None,
              keep: np.ndarray | None = None) -> dict[str, Any]:
    """Truth of the simulated TXM particle set (:func:`strainstream.sim.txm_images.particle_sample`).

    ``whiteline_eV`` (ny, nx): the analysis' map (NaN where it gave none); ``keep`` (ny, nx;
    bool): the voxels a figure of merit uses (default: every finite one). Returns
    ``simulated`` (every material voxel) and ``sampled`` (the kept voxels that hold
    material) dicts of ``whiteline_mean_eV``, ``whiteline_std_eV``; ``sampled`` also
    ``n_outside`` (kept voxels outside the particles) and ``rms_error_eV`` (measured − true,
    over the kept material voxels).
    """
    from strainstream.sim.txm_images import particle_sample, simulate_txm_scan

    shape = tuple(int(n) for n in sample["shape"])
    scan = simulate_txm_scan(np.array([8350.0]), sample=particle_sample(shape), noise=False,
                             drift_px_rms=0.0)
    truth = scan.whiteline_true_eV  # the maximum of each voxel's noiseless spectrum, eV
    material = np.isfinite(truth)
    out = {"simulated": {"whiteline_mean_eV": float(truth[material].mean()),
                         "whiteline_std_eV": float(truth[material].std())}, "map": truth}
    if whiteline_eV is not None and np.shape(whiteline_eV) == truth.shape:
        kept = np.isfinite(whiteline_eV) if keep is None else np.asarray(keep, bool) & np.isfinite(whiteline_eV)
        both = kept & material
        out["sampled"] = {"whiteline_mean_eV": float(truth[both].mean()) if both.any() else math.nan,
                          "whiteline_std_eV": float(truth[both].std()) if both.any() else math.nan,
                          "n_outside": int((kept & ~material).sum()),
                          "rms_error_eV": float(np.sqrt(np.mean((whiteline_eV[both] - truth[both]) ** 2)))
                          if both.any() else math.nan}
    return out
