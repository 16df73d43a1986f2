"""``strainstream demo --experiment study``: the study's experiments back to back, compared.

The 2025 study (REFERENCE.md) compares single-crystal (SC) and polycrystalline (PC)
LiNi0.9Co0.1O2 (NC91) and LiNi0.9Mn0.1O2 (NM91). On the simulated beamline, at reduced size:

1. operando XRD of the four coin cells (SC/PC x NC91/NM91), one after the other: the cycler
   IOC is restarted with the next cell's preset (a cell swap), one CeO2 calibration serves all
   four (same detector, same geometry); each charge is analysed live by the worker;
2. SXDM maps of a charged SC-NC91 and a charged SC-NM91 particle (the study maps single
   crystals; a PC secondary particle has no single (003) rocking curve): the endstation IOC is
   restarted with the next particle;
3. one TXM-XANES energy scan of the endstation's particle set (the simulated TXM sample does
   not depend on the material: one scan shows the white-line map, not a material contrast).

Then the comparisons the study draws: c and volume contraction on charge (PC-NC91 6.0 %/7.8 %,
PC-NM91 3.6 %/5.9 %), H2-H3 coexistence and its Δc in SC-NM91 (up to 0.68 Å), the SXDM
strain heterogeneity ratio SC-NM91 / SC-NC91 (> 3) and the white-line spread; and the report
of every run (:func:`write_study_report`, :mod:`strainstream.report`): DATA_DIR/report/.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any

from strainstream.adaptive import _num  # a value as float, NaN when none

__all__ = ["MATERIALS", "SXDM_MATERIALS", "XRD_REFERENCE", "comparisons", "format_comparisons",
           "json_safe", "run_study", "write_study_report"]

#: the study's four cathodes, in the order they are measured
MATERIALS = ("SC-NC91", "PC-NC91", "SC-NM91", "PC-NM91")
#: materials mapped by SXDM (charged single-crystal particles)
SXDM_MATERIALS = ("SC-NC91", "SC-NM91")

#: (c contraction %, volume contraction %, source) on charge to 4.5 V; REFERENCE.md gives the
#: PC values, the SC ones are the simulator presets' illustrative choices (strainstream.sim.cell)
XRD_REFERENCE: dict[str, tuple[float, float, str]] = {
    "SC-NC91": (5.0, 6.8, "sim preset"),
    "PC-NC91": (6.0, 7.8, "study"),
    "SC-NM91": (5.33, 7.0, "sim preset"),
    "PC-NM91": (3.6, 5.9, "study"),
}
#: the study: charged SC-NM91's Δd/d standard deviation is more than 3x SC-NC91's
SXDM_STRAIN_RATIO_REFERENCE = 3.0
#: the study: H2 and H3 coexist in SC-NM91 with Δc up to 0.68 Å
MAX_DELTA_C_REFERENCE_A = 0.68


def _int(value: Any) -> int:
    v = _num(value)
    return 0 if math.isnan(v) else int(v)


@contextlib.contextmanager
def _ca_messages_to_log():
    """Channel Access library messages go to the log (debug) while the study restarts IOCs on
    purpose: each cell or particle swap would print a "Virtual circuit disconnect" block."""
    import epics.ca

    log = logging.getLogger(__name__)
    epics.ca.replace_printf_handler(lambda *parts: log.debug("CA: %s", " ".join(map(str, parts))))
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            epics.ca.libca.ca_replace_printf_handler(None)  # libca's own printer again


def run_study(session, beamline, devices: dict[str, Any], root, data_dir, *, frame_size: int,
              rate_mA_g: float, duration_s: float, frame_interval_s: float, raster: int,
              angles: int, energies: int, say) -> dict[str, Any]:
    """Run the study's experiments on ``beamline`` (cycler, endstation and beam IOCs up, the
    worker following the tiled server of ``root``); return ``{"runs": [...], "comparisons": ...}``.

    Each run entry: ``uid, experiment, material, events_recorded, events_analysed, results``.
    """
    from strainstream.demo import finish_run

    runs: list[dict[str, Any]] = []

    def record(uid: str, experiment: str, material: str) -> dict[str, Any]:
        recorded, analysed, results = finish_run(root, uid, say, timeout_s=180.0)
        entry = {"uid": uid, "experiment": experiment, "material": material,
                 "events_recorded": recorded, "events_analysed": analysed,
                 "results": {k: v["summary"] for k, v in results["analyses"].items()}}
        runs.append(entry)
        return entry

    with _ca_messages_to_log():
        _measure(session, beamline, devices, data_dir, record, frame_size=frame_size,
                 rate_mA_g=rate_mA_g, duration_s=duration_s, frame_interval_s=frame_interval_s,
                 raster=raster, angles=angles, energies=energies, say=say)
    return {"runs": runs, "comparisons": comparisons(runs)}


def _measure(session, beamline, devices, data_dir, record, *, frame_size, rate_mA_g, duration_s,
             frame_interval_s, raster, angles, energies, say) -> None:
    from strainstream.demo import _operando, _sxdm, _txm, calibrate_from_ceo2

    geometry = None
    for i, material in enumerate(MATERIALS):
        say(f"[study {i + 1}/{len(MATERIALS) + len(SXDM_MATERIALS) + 1}] operando XRD of the "
            f"{material} coin cell")
        if devices["cycler"].preset.get(use_monitor=False) != material:
            beamline.restart("cycler", {"--preset": material})  # the next coin cell
            for name in ("cycler", "xrd", "xrd_sim"):
                devices[name].wait_for_connection(timeout=30)
        if geometry is None:
            geometry = calibrate_from_ceo2(session, devices["xrd"], frame_size, say, sim=devices["xrd_sim"])
        uid = _operando(session, devices, data_dir, frame_size=frame_size, rate_mA_g=rate_mA_g,
                        duration_s=duration_s, frame_interval_s=frame_interval_s, say=say,
                        geometry=geometry)
        record(uid, "operando_xrd", material)
    for j, material in enumerate(SXDM_MATERIALS):
        say(f"[study {len(MATERIALS) + j + 1}/{len(MATERIALS) + len(SXDM_MATERIALS) + 1}] SXDM map "
            f"of a charged {material} particle")
        beamline.restart("endstation", {"--sxdm-material": material})  # the next particle
        for name in ("es", "sxdm", "txm", "sxdm_sim", "txm_sim"):
            if name in devices:
                devices[name].wait_for_connection(timeout=30)
        uid = _sxdm(session, devices, raster=raster, angles=angles, say=say, material=material)
        record(uid, "sxdm", material)
    n = len(MATERIALS) + len(SXDM_MATERIALS) + 1
    say(f"[study {n}/{n}] TXM-XANES energy scan of the particle set")
    uid = _txm(session, devices, energies=energies, say=say, material="NM91")
    record(uid, "txm_xanes", "NM91")


def comparisons(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The study's comparisons from the runs' result summaries (NaN where a run lacks them)."""
    xrd: dict[str, Any] = {}
    sxdm: dict[str, Any] = {}
    txm: dict[str, Any] = {}
    for run in runs:
        m, res = run["material"], run["results"]
        if run["experiment"] == "operando_xrd":
            s = res.get("operando_xrd", {})
            c_ref, v_ref, source = XRD_REFERENCE.get(m, (math.nan, math.nan, ""))
            xrd[m] = {"c_contraction_pct": _num(s.get("c_contraction_pct")),
                      # volume change is signed (negative on charge): the contraction is its opposite
                      "volume_contraction_pct": -_num(s.get("volume_change_pct")),
                      "c_contraction_ref_pct": c_ref, "volume_contraction_ref_pct": v_ref,
                      "reference": source,
                      "c_max_A": _num(s.get("c_max_A")), "c_last_A": _num(s.get("c_last_A")),
                      "a_first_A": _num(s.get("a_first_A")), "a_last_A": _num(s.get("a_last_A")),
                      "max_delta_c_A": _num(s.get("max_delta_c_A")),
                      "two_phase_frames": _int(s.get("two_phase_frames")),
                      "max_microstrain": _num(s.get("max_microstrain")),
                      "frames_refined": _int(s.get("frames_refined"))}
        elif run["experiment"] == "sxdm":
            s = res.get("sxdm", {})
            sxdm[m] = {k: _num(s.get(k)) for k in ("strain_std", "strain_range", "tilt_xy_std_deg",
                                                   "tilt_xz_std_deg", "strain_tilt_correlation")}
            sxdm[m]["n_pixels"] = _int(s.get("n_pixels"))
        elif run["experiment"] == "txm_xanes":
            s = res.get("txm_xanes", {})
            txm[m] = {k: _num(s.get(k)) for k in ("whiteline_mean_eV", "whiteline_std_eV")}
            txm[m]["analysis_error"] = s.get("analysis_error", "")
    out: dict[str, Any] = {"operando_xrd": xrd, "sxdm": sxdm, "txm_xanes": txm}
    a, b = sxdm.get("SC-NM91", {}).get("strain_std"), sxdm.get("SC-NC91", {}).get("strain_std")
    out["sxdm_strain_std_ratio_NM91_NC91"] = (a / b) if a and b and not math.isnan(a / b) else math.nan
    out["sxdm_strain_std_ratio_reference"] = SXDM_STRAIN_RATIO_REFERENCE
    nm = xrd.get("SC-NM91", {})
    out["sc_nm91_h2_h3_coexist"] = bool(nm.get("two_phase_frames"))
    out["max_delta_c_reference_A"] = MAX_DELTA_C_REFERENCE_A
    return out


def json_safe(value: Any) -> Any:
    """``value`` with every NaN/inf float replaced by ``None`` (strict JSON, e.g. ``--json``)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def format_comparisons(comp: dict[str, Any]) -> str:
    """The comparisons as text tables for the console."""
    lines = ["operando XRD, charge to 4.5 V: contraction from the largest c / the pristine volume",
             f"  {'cell':8} {'c contr. %':>10} {'ref':>5} {'V contr. %':>10} {'ref':>5}  {'source':10} "
             f"{'a first->last Å':>16} {'c max->last Å':>16} {'2-phase':>7} {'max Δc Å':>8} {'max ε':>8}"]
    for m, r in comp["operando_xrd"].items():
        lines.append(
            f"  {m:8} {r['c_contraction_pct']:10.2f} {r['c_contraction_ref_pct']:5.2f} "
            f"{r['volume_contraction_pct']:10.2f} {r['volume_contraction_ref_pct']:5.2f}  {r['reference']:10} "
            f"{r['a_first_A']:7.4f}->{r['a_last_A']:7.4f} {r['c_max_A']:7.3f}->{r['c_last_A']:7.3f}  "
            f"{r['two_phase_frames']:7d} {r['max_delta_c_A']:8.3f} {r['max_microstrain']:8.1e}")
    if comp["operando_xrd"]:
        coexist = "yes" if comp["sc_nm91_h2_h3_coexist"] else "no"
        lines.append(f"  H2/H3 coexistence in SC-NM91: {coexist} (study: yes, Δc up to "
                     f"{comp['max_delta_c_reference_A']:.2f} Å)")
    if comp["sxdm"]:
        lines.append("SXDM, charged single-crystal particles")
        lines.append(f"  {'particle':8} {'Δd/d std':>9} {'Δd/d range':>10} {'θxy std °':>9} "
                     f"{'θxz std °':>9} {'ρ(strain,θxy)':>13} {'pixels':>6}")
        for m, r in comp["sxdm"].items():
            lines.append(f"  {m:8} {r['strain_std']:9.2e} {r['strain_range']:10.2e} "
                         f"{r['tilt_xy_std_deg']:9.4f} {r['tilt_xz_std_deg']:9.4f} "
                         f"{r['strain_tilt_correlation']:13.2f} {r['n_pixels']:6d}")
        lines.append(f"  strain heterogeneity SC-NM91 / SC-NC91: "
                     f"{comp['sxdm_strain_std_ratio_NM91_NC91']:.2f} (study: more than "
                     f"{comp['sxdm_strain_std_ratio_reference']:g}x)")
    for m, r in comp["txm_xanes"].items():
        if r.get("analysis_error"):
            lines.append(f"TXM-XANES ({m} particle set): {r['analysis_error']}")
        else:
            lines.append(f"TXM-XANES ({m} particle set): white line {r['whiteline_mean_eV']:.2f} eV, "
                         f"std {r['whiteline_std_eV']:.2f} eV over the particles")
    return "\n".join(lines)


def write_study_report(root, runs: list[dict[str, Any]], out_dir, *, server_uri: str | None = None,
                       data_dir=None, say=lambda *a: None) -> dict[str, str]:
    """Write the report (:mod:`strainstream.report`) of the study's ``runs`` (entries of
    :func:`run_study`, read again from the catalog ``root``) into ``out_dir``; its paths
    ``{"html": ..., "pdf": ...}``."""
    import matplotlib

    matplotlib.use("Agg")
    from strainstream.report import figures_of_merit, read_runs, write_report

    data, notes = read_runs(root, uids=[r["uid"] for r in runs])
    say(f"writing the study report of {len(data)} runs ...")
    paths = write_report(data, figures_of_merit(data), out_dir, notes=notes, server_uri=server_uri,
                         data_dir=data_dir, title="strainstream study report — SC/PC × NC91/NM91 "
                                              "(simulated beamline)")
    say(f"report: {paths['html']}\n        {paths['pdf']}")
    return paths
