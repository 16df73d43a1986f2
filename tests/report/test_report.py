"""``strainstream report`` without servers: figures of merit of synthetic result tables whose
values are known exactly, the simulator's truth on entries made by the simulator itself, the
run selection on a stand-in catalog, and the written files (HTML in headless chromium, PDF
through pdftoppm)."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from _plot_synth import operando_xrd_entry, sxdm_arrays, sxdm_entry, txm_arrays, txm_entry
from _report_checks import browser, check_html_in_browser, check_pdf_pages, expected_pdf_pages  # noqa: F401

from strainstream.report import (
    NoRunsFound,
    RunData,
    RunWithoutResults,
    figures_of_merit,
    format_value,
    read_runs,
    report_summary,
    write_report,
)
from strainstream.report._render import _ROWS_PER_PAGE

NAN = math.nan
UID_NM, UID_NC, UID_SX, UID_TX = ("aaaa1111-nm91", "bbbb2222-nc91", "cccc3333-sxdm", "dddd4444-txm")


def xrd_entry() -> dict:
    """Seven frames of a charge: two-phase at 120 and 160 mAh/g, the last frame flagged (its
    row is no measurement); the summary's numbers are arbitrary and must come out unchanged."""
    cols = {
        "seq_num": [1, 2, 3, 4, 5, 6, 7],
        "flag": ["", "", "", "", "", "", "refine_failed"],
        "capacity_mAh_g": [0.0, 40.0, 80.0, 120.0, 160.0, 200.0, 210.0],
        "cell_time_s": [0.0, 720.0, 1440.0, 2160.0, 2880.0, 3600.0, 3780.0],
        "voltage_V": [3.6, 3.7, 3.8, 4.0, 4.2, 4.48, 4.5],
        "n_phases": [1, 1, 1, 2, 2, 1, 0],
        "a_A": [2.87, 2.86, 2.85, 2.84, 2.83, 2.82, NAN],
        "c_A": [14.20, 14.30, 14.40, 14.45, 14.42, 13.80, NAN],
        "c_A_2": [NAN, NAN, NAN, 13.80, 13.78, NAN, NAN],
        "fraction": [1.0, 1.0, 1.0, 0.7, 0.4, 1.0, NAN],
        "fraction_2": [NAN, NAN, NAN, 0.3, 0.6, NAN, NAN],
        "volume_A3": [101.0, 100.5, 100.0, 99.0, 97.0, 95.0, NAN],
        "microstrain": [5e-4, 5e-4, 6e-4, 9e-4, 1.3e-3, 1.1e-3, NAN],
    }
    summary = {"c_contraction_pct": 4.5, "volume_change_pct": -6.25, "max_delta_c_A": 0.65,
               "two_phase_frames": 2, "frames_refined": 6}
    return {"version": "2", "status": "complete", "n_rows": 7, "summary": summary, "columns": cols}


def run(uid, experiment, material, analysis, entry, arrays=None, **start) -> RunData:
    return RunData(start={"uid": uid, "experiment": experiment, "material": material, **start},
                   results={"uid": uid, "analyses": {analysis: entry}},
                   arrays={analysis: arrays} if arrays is not None else {})


def synthetic_runs() -> list[RunData]:
    sx, tx = sxdm_arrays(), txm_arrays()
    tx.pop("_outliers")
    return [run(UID_NM, "operando_xrd", "SC-NM91", "operando_xrd", xrd_entry(), rate_mA_g=200.0),
            run(UID_NC, "operando_xrd", "PC-NC91", "operando_xrd", operando_xrd_entry(12, "PC-NC91")),
            run(UID_SX, "sxdm", "SC-NM91", "sxdm", sxdm_entry(sx), sx),
            run(UID_TX, "txm_xanes", "NM91", "txm_xanes", txm_entry(tx), tx)]


def by_key(merits):
    return {(m.uid, m.key): m for m in merits}


def test_figures_of_merit_are_the_known_values():
    runs = synthetic_runs()
    m = by_key(figures_of_merit(runs))
    assert m[UID_NM, "c_contraction_pct"].value == 4.5
    assert m[UID_NM, "volume_change_pct"].value == -6.25
    assert m[UID_NM, "max_delta_c_A"].value == 0.65
    # the frames refined with two phases, the flagged last row left out
    assert m[UID_NM, "two_phase_window_mAh_g"].value == (120.0, 160.0)
    assert m[UID_NM, "two_phase_window_mAh_g"].detail == "2 of 6 frames"
    top = m[UID_NM, "microstrain_top"]
    assert top.value == 1.1e-3 and top.detail == "at 4.480 V, 200.0 mAh/g"
    for merit in (m[UID_NM, k] for k in ("c_contraction_pct", "microstrain_top")):
        assert (merit.uid, merit.analysis, merit.version, merit.material) == (UID_NM, "operando_xrd", "2", "SC-NM91")
        assert merit.simulated is None and merit.sampled is None  # no simulation recorded
    assert m[UID_NC, "two_phase_window_mAh_g"].value is None  # a solid solution
    sx, tx = sxdm_arrays(), txm_arrays()
    assert m[UID_SX, "strain_std"].value == pytest.approx(np.std(sx["strain"][sx["mask"]]), rel=1e-15)
    assert m[UID_SX, "strain_std"].version == "1"
    wl = tx["whiteline_eV"]
    assert m[UID_TX, "whiteline_mean_eV"].value == pytest.approx(np.nanmean(wl), rel=1e-15)
    # over the particles only: the two isolated outlier voxels (8341 and 8359.5 eV) left out
    inside = np.isfinite(wl)
    for iy, ix in tx["_outliers"]:
        inside[iy, ix] = False
    assert m[UID_TX, "whiteline_mean_eV_particles"].value == pytest.approx(wl[inside].mean(), rel=1e-12)
    assert m[UID_TX, "whiteline_std_eV_particles"].value == pytest.approx(wl[inside].std(), rel=1e-12)
    assert m[UID_TX, "whiteline_std_eV"].value > m[UID_TX, "whiteline_std_eV_particles"].value
    summary = report_summary(runs, list(m.values()), {"html": "h", "pdf": "p"})
    assert summary["html"] == "h" and len(summary["runs"]) == 4
    assert {"key": "two_phase_window_mAh_g", "uid": UID_NM, "value": [120.0, 160.0]}.items() <= \
        next(x for x in summary["figures_of_merit"] if x["key"] == "two_phase_window_mAh_g").items()


SIM_XRD_CONFIG = {"xrd": {"data": {"xrd_cam_manufacturer": "strainstream", "xrd_cam_model": "simulated xrd"}},
                  "cycler": {"data": {"cycler_preset": "SC-NM91"}}}


@pytest.mark.parametrize("how", ["start document", "detector configuration"])
def test_the_truth_of_a_simulated_charge_is_the_simulator_at_its_frames(how):
    """An entry made by the simulated cell itself (its lattice at each frame, as an exact
    analysis would refine it): the "as sampled" truth equals the measured numbers, the
    "simulated" truth is the preset's open-circuit charge."""
    from strainstream.sim.cell import contraction_metrics, preset

    entry = operando_xrd_entry(40, "SC-NM91", rate_mA_g=200.0)
    start = {"simulation": {"cell_preset": "SC-NM91"}} if how == "start document" else {}
    r = run(UID_NM, "operando_xrd", "SC-NM91", "operando_xrd", entry, rate_mA_g=200.0, **start)
    if how == "detector configuration":
        r.configuration = SIM_XRD_CONFIG
    m = by_key(figures_of_merit([r]))
    cols = entry["columns"]
    # the analysis' definition (OperandoXRDCallback.summary): c_max over both phases, the last
    # frame's fraction-weighted c, the first and last frames' fraction-weighted volume
    f = lambda k, i: cols[k][i] if not math.isnan(cols[k][i]) else 0.0  # noqa: E731
    c_last = f("fraction", -1) * cols["c_A"][-1] + f("fraction_2", -1) * f("c_A_2", -1)
    c_max = np.nanmax(np.r_[cols["c_A"], cols["c_A_2"]])
    v = [f("fraction", i) * cols["volume_A3"][i] + f("fraction_2", i) * f("volume_A3_2", i) for i in (0, -1)]
    assert m[UID_NM, "c_contraction_pct"].sampled == pytest.approx(100 * (c_max - c_last) / c_max, rel=1e-9)
    assert m[UID_NM, "volume_change_pct"].sampled == pytest.approx(100 * (v[1] - v[0]) / v[0], rel=1e-9)
    assert m[UID_NM, "max_delta_c_A"].sampled == pytest.approx(np.nanmax(cols["delta_c_A"]), rel=1e-9)
    window = m[UID_NM, "two_phase_window_mAh_g"]
    assert window.sampled == pytest.approx(window.value, rel=1e-12) and window.value[1] > window.value[0]
    # the cell replayed to the last frame's time: the microstrain the simulator had there
    assert m[UID_NM, "microstrain_top"].sampled == pytest.approx(cols["microstrain"][-1], rel=1e-9)
    nominal = contraction_metrics("SC-NM91")
    cap = preset("SC-NM91").practical_capacity_mAh_g
    assert m[UID_NM, "c_contraction_pct"].simulated == nominal["c_contraction_pct"]
    assert m[UID_NM, "volume_change_pct"].simulated == -nominal["volume_contraction_pct"]
    assert m[UID_NM, "max_delta_c_A"].simulated == nominal["max_delta_c_A"] == pytest.approx(0.68, abs=1e-3)
    assert window.simulated == pytest.approx((0.74 * cap, 0.88 * cap), rel=1e-12)


def test_no_truth_for_a_real_detector():
    r = run(UID_NM, "operando_xrd", "SC-NM91", "operando_xrd", operando_xrd_entry(12), rate_mA_g=200.0)
    r.configuration = {"xrd": {"data": {"xrd_cam_manufacturer": "Dectris", "xrd_cam_model": "PILATUS3 X CdTe 2M"}},
                       "cycler": {"data": {"cycler_preset": "SC-NM91"}}}
    assert all(m.simulated is None and m.sampled is None for m in figures_of_merit([r]))


def test_sxdm_and_txm_truth_over_what_the_analysis_kept():
    """Maps equal to the simulator's truth: measured = as sampled; the simulated particle's
    Δd/d spread is the preset's (0.0018 for charged SC-NM91)."""
    from strainstream.sim.sxdm_frames import particle_preset
    from strainstream.sim.txm_images import particle_sample, simulate_txm_scan

    t = particle_preset("SC-NM91", "charged", ny=8, nx=8).truth()
    inside = t["weight"] > 0.5 * t["weight"].max()
    inside[4, 4] = False  # a pixel the analysis did not keep
    sx = {k: np.where(inside, t[k], np.nan) for k in ("strain", "tilt_xy_deg", "tilt_xz_deg")}
    sx.update(mask=inside, intensity=np.where(inside, 1.0, 0.0))
    s = t["strain"][inside]
    entry = {"version": "1", "status": "complete", "n_rows": 0, "columns": {},
             "summary": {"strain_std": float(s.std()), "n_pixels": int(inside.sum()),
                         "strain_tilt_correlation": float(np.corrcoef(s, t["tilt_xy_deg"][inside])[0, 1]),
                         "strain_tilt_xz_correlation": float(np.corrcoef(s, t["tilt_xz_deg"][inside])[0, 1])}}
    sim = {"sxdm_particle": {"material": "SC-NM91", "state": "charged", "ny": 8, "nx": 8}}
    wl_true = simulate_txm_scan(np.array([8350.0]), sample=particle_sample((48, 48)), noise=False,
                                drift_px_rms=0.0).whiteline_true_eV
    tx = {"whiteline_eV": wl_true, "mask": np.isfinite(wl_true)}
    m = by_key(figures_of_merit([
        run(UID_SX, "sxdm", "SC-NM91", "sxdm", entry, sx, simulation=sim),
        run(UID_TX, "txm_xanes", "NM91", "txm_xanes", txm_entry(tx), tx, simulation={"txm_sample": {}})]))
    for key in ("strain_std", "strain_tilt_correlation", "strain_tilt_xz_correlation"):
        assert m[UID_SX, key].sampled == pytest.approx(m[UID_SX, key].value, rel=1e-12), key
    assert m[UID_SX, "strain_std"].simulated == pytest.approx(0.0018, rel=1e-12)
    assert m[UID_SX, "strain_std"].simulated != m[UID_SX, "strain_std"].sampled  # one pixel fewer
    for key in ("whiteline_mean_eV", "whiteline_std_eV", "whiteline_mean_eV_particles"):
        assert m[UID_TX, key].sampled == pytest.approx(m[UID_TX, key].value, rel=1e-12), key
        assert m[UID_TX, key].simulated == pytest.approx(m[UID_TX, key].value, rel=1e-12), key
    assert "0 outside the simulated particles; per-voxel rms error 0.00 eV" in m[UID_TX, "whiteline_std_eV"].detail


def test_format_value():
    assert format_value(4.5, "%") == "4.50 %"
    assert format_value((120.0, 160.04), "mAh/g") == "120.0–160.0 mAh/g"
    assert format_value(None, "Å") == format_value(NAN, "Å") == "—"
    assert format_value(1.1e-3, "") == "0.0011"
    assert format_value(8350.7975, "eV") == "8350.80 eV"


# ---------------------------------------------------------------------------------- selection


class Node(dict):
    """A catalog node as read_results reads one: children by key, ``metadata``."""

    def __init__(self, metadata=None, children=None):
        super().__init__(children or {})
        self.metadata = metadata or {}


class Table:
    def __init__(self, metadata, rows):
        self.metadata, self.rows = metadata, rows
        self.columns = list(rows[0]) if rows else []

    def read(self):
        rows = self.rows

        class Frame:
            def to_dict(self, orient):
                return [dict(r) for r in rows]
        return Frame()


def catalog() -> Node:
    """Three analysed runs (SC-NM91 XRD, NM91 TXM, PC-NC91 XRD of series S1), a calibration and an
    unanalysed SC-NM91 run."""
    def raw(uid, experiment, material=None, **extra):
        start = {"uid": uid, "experiment": experiment, **({"material": material} if material else {}), **extra}
        return Node({"start": start}, {"primary": Node({"configuration": {}})})

    def table(name):
        return Table({"version": "2", "status": "complete", "summary": {"c_contraction_pct": 5.0}},
                     [{"seq_num": 1, "c_A": 14.2, "flag": ""}])

    runs = {"11aa22bb-cal": raw("11aa22bb-cal", "calibration"),
            "22bb33cc-nm": raw("22bb33cc-nm", "operando_xrd", "SC-NM91"),
            "33cc44dd-tx": raw("33cc44dd-tx", "txm_xanes", "NM91"),
            "44dd55ee-nc": raw("44dd55ee-nc", "operando_xrd", "PC-NC91", series="S1-abcdef"),
            "55ee66ff-nm": raw("55ee66ff-nm", "operando_xrd", "SC-NM91")}
    derived = Node({}, {uid: Node({}, {("txm_xanes" if "tx" in uid else "operando_xrd"):
                                       table(uid)}) for uid in ("22bb33cc-nm", "33cc44dd-tx", "44dd55ee-nc")})
    return Node({}, {**runs, "derived": derived})


def test_run_selection():
    root = catalog()
    runs, notes = read_runs(root, materials=["sc-nm91"])
    assert [r.uid for r in runs] == ["22bb33cc-nm", "33cc44dd-tx"]  # XRD first; TXM of the composition
    assert len(notes) == 1 and "55ee66ff-nm" in notes[0] and "no derived results" in notes[0]
    assert runs[0].analyses["operando_xrd"]["version"] == "2"
    assert [r.uid for r in read_runs(root, materials=["NM91"])[0]] == ["33cc44dd-tx"]
    assert [r.uid for r in read_runs(root, series="S1-abc")[0]] == ["44dd55ee-nc"]
    assert [r.uid for r in read_runs(root)[0]] == ["22bb33cc-nm", "44dd55ee-nc", "33cc44dd-tx"]
    assert [r.uid for r in read_runs(root, uids=["44dd55", "22bb33cc-nm"])[0]] == ["44dd55ee-nc", "22bb33cc-nm"]
    with pytest.raises(NoRunsFound, match="no analysed run found for material PC-NM91"):
        read_runs(root, materials=["PC-NM91"])  # its composition's TXM scan alone is no report of it
    with pytest.raises(NoRunsFound, match="series S2"):
        read_runs(root, series="S2")
    with pytest.raises(RunWithoutResults, match="11aa22bb-cal has no derived results: a calibration run"):
        read_runs(root, uids=["11aa22bb"])
    with pytest.raises(RunWithoutResults, match="not analysed yet"):
        read_runs(root, uids=["55ee66ff-nm"])


# ---------------------------------------------------------------------------------- files


def test_report_files(tmp_path, browser):  # noqa: F811 - the dashboard tests' fixture
    runs = synthetic_runs()
    merits = figures_of_merit(runs)
    paths = write_report(runs, merits, tmp_path / "out", notes=["a note"], server_uri="http://host:1/api/v1")
    html = open(paths["html"], encoding="utf-8").read()
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', html)
    # the comparison, the two charges' figures and phase fractions, SXDM, TXM
    assert len(srcs) == 1 + 2 * 2 + 1 + 1
    assert all(s.startswith("data:image/png;base64,") for s in srcs)  # self-contained
    assert not re.search(r'(src|href)="(?!data:|#|http://host:1/api/v1/metadata/)', html)
    for m in merits:  # every number with its run (uid → section, tiled) and analysis version
        row = re.search(rf"<tr><td>{re.escape(m.material)}</td><td>{re.escape(m.label)}</td>(.*?)</tr>",
                        html.replace("&#x27;", "'"))
        assert row and format_value(m.value, m.unit) in row.group(1)
        assert f'href="#run-{m.uid}"' in row.group(1) and f"{m.analysis} v{m.version}" in row.group(1)
        assert f'href="http://host:1/api/v1/metadata/derived/{m.uid}/{m.analysis}"' in row.group(1)
    for r in runs:
        assert f'<section id="run-{r.uid}">' in html
    assert "a note" in html
    page = check_html_in_browser(browser, paths["html"])
    assert page["merit_rows"] == len(merits) and len(page["images"]) == len(srcs)
    assert open(paths["pdf"], "rb").read(5) == b"%PDF-"
    check_pdf_pages(paths["pdf"], tmp_path / "pages", expected_pdf_pages(len(merits), len(srcs), _ROWS_PER_PAGE))


def test_the_browser_check_can_fail(tmp_path, browser):  # noqa: F811
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                   '<img alt="x" src="data:image/png;base64,AAAA"></body></html>')
    with pytest.raises(AssertionError, match="broken images"):
        check_html_in_browser(browser, bad)
    bad.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                   '<script>console.error("boom")</script></body></html>')
    with pytest.raises(AssertionError, match="no images"):
        check_html_in_browser(browser, bad)
