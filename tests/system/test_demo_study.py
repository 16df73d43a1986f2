"""`strainstream demo --experiment study` at its smallest: the four cells charged with XRD
(cycler IOC restarted with each preset), SXDM of the two SC particles, one TXM scan, every
event analysed, the study's comparisons computed from the live results, and the report it ends
with — its figures of merit checked against the truth the simulator simulated, its HTML opened
in headless chromium, its PDF rasterised by pdftoppm.

One study run (a module fixture) serves every test of this file (xdist --dist loadfile keeps
them on one process)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from strainstream.study import MATERIALS, SXDM_MATERIALS

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "report"))
from _report_checks import browser, check_html_in_browser, check_pdf_pages, expected_pdf_pages  # noqa: E402, F401

pytestmark = [pytest.mark.system, pytest.mark.slow]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """The study demo at its smallest: (data dir, its --json summary, wall seconds).

    A frame every 0.5 s of an 8 s charge: ~15 mAh/g apart, two or three inside SC-NM91's H2-H3
    window (169-201 mAh/g at 200 mA/g). At 1 s (~30 mAh/g, more when a loaded machine is slow to
    take a frame) a charge could step over the window and find no second phase at all."""
    d = tmp_path_factory.mktemp("study") / "study"
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "strainstream.cli", "demo", "--experiment", "study",
                        "--data-dir", str(d), "--frame-size", "512", "--duration", "8", "--interval", "0.5",
                        "--raster", "4", "--angles", "5", "--energies", "30", "--json"],
                       capture_output=True, text=True, timeout=840, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Virtual circuit disconnect" not in r.stderr  # the cell swaps are intentional
    return d, json.loads(r.stdout), time.monotonic() - t0


@pytest.fixture(scope="module")
def report(study):
    """The runs, figures of merit and per-run truth of the study's report, read from its catalog."""
    from strainstream.offline_reader import open_catalog
    from strainstream.report import figures_of_merit, read_runs

    d, summary, _ = study
    with open_catalog(d) as root, root.reading():
        runs, notes = read_runs(root, uids=[r["uid"] for r in summary["runs"]])
    assert not notes
    return runs, figures_of_merit(runs)


@pytest.mark.timeout(900)
def test_study_demo_at_its_smallest(study):
    d, summary, seconds = study
    print(f"study demo with its report: {seconds:.0f} s")
    runs = summary["runs"]
    assert [(x["experiment"], x["material"]) for x in runs] == (
        [("operando_xrd", m) for m in MATERIALS] + [("sxdm", m) for m in SXDM_MATERIALS]
        + [("txm_xanes", "NM91")])
    assert summary["events_recorded"] == summary["events_analysed"] == sum(x["events_recorded"] for x in runs)
    for x in runs:
        assert x["events_analysed"] == x["events_recorded"] > 0, x
    # each charge ran on its own cell: the start documents name the preset the cycler reported
    root_materials = [x["results"]["operando_xrd"] for x in runs[:4]]
    assert all(s["frames_refined"] >= 4 for s in root_materials)
    comp = summary["comparisons"]
    xrd = comp["operando_xrd"]
    assert set(xrd) == set(MATERIALS)
    for m, row in xrd.items():
        assert 2.0 < row["c_contraction_pct"] < 8.0, (m, row)  # reference 3.6-6.0 %
        assert row["a_last_A"] < row["a_first_A"]  # a shrinks on charge
    # NM91 PC contracts least, NC91 PC most (REFERENCE.md: 3.6 % vs 6.0 %)
    assert xrd["PC-NM91"]["c_contraction_pct"] < xrd["PC-NC91"]["c_contraction_pct"]
    ratio = comp["sxdm_strain_std_ratio_NM91_NC91"]
    assert math.isfinite(ratio) and ratio > 1.5  # study: > 3 (4x4 raster: a coarse estimate)
    txm = comp["txm_xanes"]["NM91"]
    assert not txm["analysis_error"] and 8345.0 < txm["whiteline_mean_eV"] < 8356.0
    # the demo ends by writing the report into the data directory
    assert summary["report"] == {"html": str(d.resolve() / "report" / "report.html"),
                                 "pdf": str(d.resolve() / "report" / "report.pdf")}
    assert all(os.path.getsize(p) > 10_000 for p in summary["report"].values())


def _table(merits) -> str:
    from strainstream.report import format_value

    lines = [f"{'material':8} {'figure of merit':30} {'measured':>18} {'as sampled':>18} {'simulated':>18}"]
    for m in merits:
        lines.append(f"{m.material:8} {m.key:30} {format_value(m.value, m.unit):>18} "
                     f"{format_value(m.sampled, m.unit):>18} {format_value(m.simulated, m.unit):>18}")
    return "\n".join(lines)


def test_study_report_figures_of_merit_against_the_simulators_truth(study, report):
    """Each figure of merit against the truth the run was simulated with. "as sampled" is what
    an exact analysis gives from the recorded frames/pixels/voxels (the analysis is judged on
    it, tight); "simulated" is the material's own property (the charge stops at 4.5 V under
    current before soc 1 and frames are ~15 mAh/g apart at this size: looser)."""
    from strainstream.report._truth import simulation_of, txm_truth, xrd_truth

    runs, merits = report
    print(_table(merits))
    m = {(x.material, x.key): x for x in merits}
    assert all(x.sampled is not None and x.simulated is not None for x in merits
               if x.key != "two_phase_window_mAh_g"), "every figure of a simulated run has its truth"
    for material in MATERIALS:
        # refined c is within ~0.006 Å (0.04 %) of the simulator's c at each frame of these 512²
        # frames; a contraction is the difference of two c values: 0.1 percentage point
        c = m[material, "c_contraction_pct"]
        assert abs(c.value - c.sampled) < 0.1, c
        assert abs(c.value - c.simulated) < 0.5, c  # soc_end 0.95-0.99, c_max between frames
        # V = (√3/2)a²c: a and c errors add (2·0.03 % + 0.04 %): 0.15 pp
        v = m[material, "volume_change_pct"]
        assert abs(v.value - v.sampled) < 0.15, v
        assert abs(v.value - v.simulated) < 0.6, v
        # Williamson–Hall ε of the last frame vs the simulator's (its cell replayed to that time):
        # 10 % (the fit separates size and strain broadening on a 512² frame; seen: ≤ 3 %)
        eps = m[material, "microstrain_top"]
        assert abs(eps.value / eps.sampled - 1) < 0.10, eps
        assert abs(eps.value / eps.simulated - 1) < 0.15, eps  # + the rate-gradient term, soc < 1
        dc, window = m[material, "max_delta_c_A"], m[material, "two_phase_window_mAh_g"]
        if material != "SC-NM91":  # solid solutions: no second phase, in truth and refined
            assert dc.value == dc.sampled == dc.simulated == 0.0 and window.value is None
            assert window.simulated is None
    # SC-NM91: H2 and H3 coexist inside the simulator's window
    dc, window = m["SC-NM91", "max_delta_c_A"], m["SC-NM91", "two_phase_window_mAh_g"]
    lo, hi = window.simulated
    assert window.value is not None and lo - 1.0 <= window.value[0] <= window.value[1] <= hi + 1.0, window
    # two c's refined from overlapping (003)-region peaks: 0.03 Å; the study's 0.68 Å within 0.06 Å
    # (Δc shrinks across the window from 0.68 to 0.66 Å, a sampled frame sees at most 0.68)
    assert abs(dc.value - dc.sampled) < 0.03 and abs(dc.value - dc.simulated) < 0.06, dc
    # frame by frame: a frame the simulator had in two phases with a minority fraction ≥ 0.15 is
    # refined with two; a single-phase frame with one (0 < minority < 0.15: either)
    xrd_run = next(r for r in runs if r.experiment == "operando_xrd" and r.material == "SC-NM91")
    cols = xrd_run.analyses["operando_xrd"]["columns"]
    good = [i for i, f in enumerate(cols["flag"]) if not f and cols["c_A"][i] is not None]
    truth = xrd_truth(simulation_of(xrd_run.start, xrd_run.configuration)["cell_preset"],
                      np.array([cols["capacity_mAh_g"][i] for i in good], float),
                      np.array([cols["cell_time_s"][i] for i in good], float), 200.0)["sampled"]
    for k, i in enumerate(good):
        minority, refined = truth["minority_fraction"][k], cols["n_phases"][i]
        if truth["n_phases"][k] == 1 or minority >= 0.15:
            assert refined == truth["n_phases"][k], (i, cols["capacity_mAh_g"][i], minority, refined)

    for material in SXDM_MATERIALS:
        # per-pixel Δd/d error ~5e-5 (Poisson counts on 5 rocking angles) on a 6e-4 / 1.8e-3 spread
        s = m[material, "strain_std"]
        assert abs(s.value / s.sampled - 1) < 0.10 and abs(s.value / s.simulated - 1) < 0.15, s
        # θxz per pixel within ~0.002° of the simulator's, on a spread of 0.006-0.02°
        r = m[material, "strain_tilt_xz_correlation"]
        assert abs(r.value - r.sampled) < 0.15, r
    ratio = m["SC-NM91", "strain_std"].value / m["SC-NC91", "strain_std"].value
    truth_ratio = m["SC-NM91", "strain_std"].simulated / m["SC-NC91", "strain_std"].simulated
    assert truth_ratio == pytest.approx(3.0, rel=1e-9) and abs(ratio / truth_ratio - 1) < 0.15

    # white line: the per-voxel fit error (rms ~0.4 eV) averages out over ~5000 voxels; the
    # bias of the fit on the 1.7 eV grid across the edge stays below 0.15 eV
    for key in ("whiteline_mean_eV", "whiteline_mean_eV_particles"):
        w = m["NM91", key]
        assert abs(w.value - w.sampled) < 0.15 and abs(w.value - w.simulated) < 0.15, w
    # the spread over the particles = the true spread and the independent per-voxel error in
    # quadrature (±10 %); all voxels (isolated ones outside the particles too) spread more
    txm_run = next(r for r in runs if r.experiment == "txm_xanes")
    from strainstream.callbacks.plots.xanes import particle_mask

    wl = np.asarray(txm_run.arrays["txm_xanes"]["whiteline_eV"], float)
    t = txm_truth(simulation_of(txm_run.start, txm_run.configuration, txm_run.arrays["txm_xanes"])["txm_sample"],
                  wl, particle_mask(np.isfinite(wl)))["sampled"]
    w = m["NM91", "whiteline_std_eV_particles"]
    expected = math.hypot(t["whiteline_std_eV"], t["rms_error_eV"])
    assert abs(w.value / expected - 1) < 0.10, (w, t)
    assert w.sampled <= w.value <= m["NM91", "whiteline_std_eV"].value


@pytest.mark.xfail(strict=True, reason="5 rocking angles 0.3° apart (the study at its smallest) do "
                   "not resolve θxy, the tilt along the rocking direction, of 0.01-0.05°: measured θxy "
                   "spreads 3-5x less than the simulator's and does not follow it, while Δd/d and θxz "
                   "do (the fly-map system test, 10 angles 0.11° apart, recovers θxy within 0.005°); "
                   "the report shows strain–θxy correlations of +0.84 / -0.51 against the true -0.79")
def test_study_report_strain_rotation_xy_correlation(report):
    _, merits = report
    for x in merits:
        if x.key == "strain_tilt_correlation":
            assert abs(x.value - x.sampled) < 0.15, x


def test_study_report_names_every_number_with_its_run_and_version(study, report):
    from strainstream.report import format_value

    d, summary, _ = study
    runs, merits = report
    html = Path(summary["report"]["html"]).read_text(encoding="utf-8").replace("&#x27;", "'")
    for x in merits:
        row = next(r for r in html.split("<tr>") if f"<td>{x.material}</td><td>{x.label}</td>" in r)
        for text in (format_value(x.value, x.unit), format_value(x.sampled, x.unit),
                     format_value(x.simulated, x.unit), f'href="#run-{x.uid}"', f"{x.analysis} v{x.version}",
                     f'{summary["tiled_uri"]}/metadata/{x.uid}"'):
            assert text in row, (text, row[:400])
    for r in runs:
        assert f'<section id="run-{r.uid}">' in html


def test_study_report_in_a_browser_and_through_pdftoppm(study, report, browser, tmp_path):  # noqa: F811
    from strainstream.report._render import _ROWS_PER_PAGE

    _, summary, _ = study
    _, merits = report
    page = check_html_in_browser(browser, summary["report"]["html"])
    # the comparison; per charge the XRD figure and the phase fractions; 2 SXDM; 1 TXM
    assert len(page["images"]) == 1 + 2 * len(MATERIALS) + len(SXDM_MATERIALS) + 1
    assert page["merit_rows"] == len(merits)
    check_pdf_pages(summary["report"]["pdf"], tmp_path / "pages",
                    expected_pdf_pages(len(merits), len(page["images"]), _ROWS_PER_PAGE))


def test_report_command_on_the_study(study, tmp_path):
    d, summary, _ = study

    def report(*args):
        return subprocess.run([sys.executable, "-m", "strainstream.cli", "report", "--data-dir", str(d), *args],
                              capture_output=True, text=True, timeout=300)

    r = report("--material", "SC-NM91", "--output", str(tmp_path / "nm91"), "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [(x["experiment"], x["material"]) for x in out["runs"]] == [
        ("operando_xrd", "SC-NM91"), ("sxdm", "SC-NM91"), ("txm_xanes", "NM91")]
    assert out["html"] == str(tmp_path / "nm91" / "report.html") and os.path.getsize(out["pdf"]) > 10_000
    assert {x["key"] for x in out["figures_of_merit"]} >= {"c_contraction_pct", "strain_std", "whiteline_mean_eV"}
    r = report("--material", "XX-NM91", "--output", str(tmp_path / "none"))
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "strainstream report: error: no analysed run found for material XX-NM91; `strainstream runs` lists "
        "the runs and their materials"]
    calibration = next(uid for uid in _uids(d) if uid not in {x["uid"] for x in summary["runs"]})
    r = report("--runs", calibration[:8], "--output", str(tmp_path / "none"))
    assert r.returncode == 2 and "has no derived results: a calibration run" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "none").exists()


def _uids(d) -> list[str]:
    from strainstream.offline_reader import open_catalog

    with open_catalog(d) as root, root.reading():
        return [k for k in root if k != "derived"]
