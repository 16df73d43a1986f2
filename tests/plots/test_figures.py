"""The figures of #21 point 4, rendered in process from synthetic results with known values:
what a scientist reads at a glance (axes and units, legends, colour bars, shared axes, titles)."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from _plot_synth import (
    XRD_START,
    operando_xrd_entry,
    sxdm_arrays,
    sxdm_entry,
    txm_arrays,
    txm_entry,
)

from strainstream.callbacks.plots import figure_for, png_path, save_figure
from strainstream.callbacks.plots.xanes import particle_mask
from strainstream.callbacks.plots.xrd import CAPACITY_LABEL, VOLTAGE_LABEL, VOLUME_LABEL
from strainstream.callbacks.xrd import Q003_GRID_A_INV


def _colorbar_axes(fig):
    return {cb.ax for ax in fig.axes for im in (*ax.images, *ax.collections)
            if (cb := getattr(im, "colorbar", None)) is not None}


def _panel(fig, title):
    (ax,) = [ax for ax in fig.axes if ax.get_title() == title]
    return ax


def _png_size(path) -> tuple[int, int]:
    with open(path, "rb") as fh:
        head = fh.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


# ---------------------------------------------------------------- operando XRD


@pytest.fixture(scope="module")
def xrd():
    entry = operando_xrd_entry()
    return entry, figure_for("operando_xrd", entry, start=XRD_START)


def test_xrd_lattice_panels_share_the_capacity_axis(xrd):
    entry, fig = xrd
    cap = np.asarray(entry["columns"]["capacity_mAh_g"])
    panels = {t: _panel(fig, t) for t in ("lattice parameter a", "lattice parameter c", "unit-cell volume",
                                          "microstrain (Williamson–Hall)", "voltage profile")}
    a_ax = panels["lattice parameter a"]
    for title, ax in panels.items():
        assert ax.get_shared_x_axes().joined(ax, a_ax), title
        for line in ax.get_lines():
            if line.get_gid() != "reference":  # c_max, c0 marks
                np.testing.assert_array_equal(line.get_xdata(), cap)  # capacity, not x or time
    for title in ("lattice parameter c", "microstrain (Williamson–Hall)", "voltage profile"):
        assert panels[title].get_xlabel() == CAPACITY_LABEL == "capacity (mAh g$^{-1}$)"
    # microstrain plotted in units of 1e-3, both phases
    eps = np.asarray(entry["columns"]["microstrain"])
    ax_e = panels["microstrain (Williamson–Hall)"]
    np.testing.assert_allclose(ax_e.get_lines()[0].get_ydata(), eps * 1e3)
    assert "10$^{-3}$" in ax_e.get_ylabel()


def test_xrd_c_of_h3_has_its_own_axis_not_the_a_scale(xrd):
    entry, fig = xrd
    cols = entry["columns"]
    ax_a, ax_c = _panel(fig, "lattice parameter a"), _panel(fig, "lattice parameter c")
    c2 = np.asarray(cols["c_A_2"])
    assert np.isfinite(c2).sum() >= 5  # the H2/H3 window is in the synthetic charge
    lo, hi = ax_a.get_ylim()
    assert 2.8 < lo < hi < 2.9  # only a on the a axis: no c point can sit on the a curve
    lo, hi = ax_c.get_ylim()
    assert lo < np.nanmin(c2) and hi > max(cols["c_A"])
    hollow = [ln for ln in ax_c.get_lines() if ln.get_markerfacecolor() == "none" and ln.get_gid() is None]
    (h3,) = hollow
    np.testing.assert_array_equal(h3.get_ydata(), c2)
    assert not any(ax.get_label() for ax in fig.axes if ax.get_ylabel() == "c (Å)" and ax is not ax_c)
    assert ax_a.get_ylabel() == "a (Å)" and ax_c.get_ylabel() == "c (Å)"


def test_xrd_legend_explains_filled_and_hollow_markers(xrd):
    _, fig = xrd
    (legend,) = fig.legends
    texts = [t.get_text() for t in legend.get_texts()]
    assert texts[0].startswith("phase 1") and texts[1].startswith("phase 2") and "hollow" in texts[1]
    filled, hollow = legend.legend_handles
    assert filled.get_markerfacecolor() != "none" and hollow.get_markerfacecolor() == "none"


def test_xrd_volume_is_not_confusable_with_voltage(xrd):
    _, fig = xrd
    ax_v = _panel(fig, "unit-cell volume")
    assert ax_v.get_ylabel() == VOLUME_LABEL == "cell volume (Å$^3$)"
    labels = [lbl for ax in fig.axes for lbl in (ax.get_xlabel(), ax.get_ylabel())]
    assert "V (Å$^3$)" not in labels
    assert all("V vs Li" in lbl for lbl in labels if lbl.startswith("voltage ("))


def test_xrd_contour_has_a_colour_bar_and_voltage_beside_it(xrd):
    _, fig = xrd
    ax_q = _panel(fig, "(003) intensity")
    (mesh,) = ax_q.collections
    assert mesh.colorbar is not None and "(003) intensity" in mesh.colorbar.ax.get_xlabel()
    assert ax_q.get_xlabel() == "Q (Å$^{-1}$)" and ax_q.get_ylabel() == "time (h)"
    ax_t = _panel(fig, "voltage")
    assert ax_t.get_shared_y_axes().joined(ax_t, ax_q) and ax_t.get_xlabel() == VOLTAGE_LABEL
    # the intensity maximum follows the (003) peak: Q = 6π/c of the first frame
    c0 = operando_xrd_entry(n=2)["columns"]["c_A"][0]
    q = Q003_GRID_A_INV
    row0 = np.asarray(mesh.get_array()).reshape(-1, q.size)[0]
    assert q[np.argmax(row0)] == pytest.approx(6 * np.pi / c0, abs=0.003)


def test_xrd_dqdv_shares_the_voltage_axis_of_the_profile(xrd):
    _, fig = xrd
    ax_p, ax_dq = _panel(fig, "voltage profile"), _panel(fig, "dQ/dV")
    assert ax_dq.get_shared_y_axes().joined(ax_dq, ax_p)
    assert ax_p.get_ylabel() == VOLTAGE_LABEL and ax_dq.get_xlabel() == "dQ/dV (mAh g$^{-1}$ V$^{-1}$)"
    (line,) = ax_dq.get_lines()
    v, dq = line.get_ydata(), line.get_xdata()
    assert 4.1 < v[np.argmax(dq)] < 4.3  # the H2→H3 peak of the simulated cell (≈4.2 V)


def test_xrd_every_panel_has_a_title_and_units(xrd):
    _, fig = xrd
    bars = _colorbar_axes(fig)
    panels = [ax for ax in fig.axes if ax not in bars]
    assert len(panels) == 9
    for ax in panels:
        assert ax.get_title(), ax
        for label in (ax.get_xlabel(), ax.get_ylabel()):
            if label:
                assert "(" in label or "/" in label, label  # a unit, or a dimensionless ratio
    ratio = _panel(fig, "c/c$_0$ vs (a/a$_0$)$^2$ (a$_0$, c$_0$: pristine)")
    assert ratio.get_xlabel() == "(a/a$_0$)$^2$" and ratio.get_ylabel() == "c/c$_0$"
    assert ratio.collections[0].colorbar.ax.get_ylabel() == CAPACITY_LABEL


def test_xrd_title_names_material_and_rate_and_contraction_says_from_where(xrd):
    entry, fig = xrd
    title = fig.get_suptitle()
    assert "SC-NM91" in title and "coin cell 7" in title and "200 mA g$^{-1}$" in title
    assert "run 01234567" in title and "80 events" in title
    s = entry["summary"]
    legend = _panel(fig, "lattice parameter c").get_legend()
    body = legend.get_title().get_text()
    from_pristine = 100 * (s["c_first_A"] - s["c_last_A"]) / s["c_first_A"]
    assert f"{s['c_contraction_pct']:.2f} % from c$_{{max}}$, {from_pristine:.2f} % from pristine c$_0$" in body
    assert [t.get_text() for t in legend.get_texts()] == [f"c$_{{max}}$ {s['c_max_A']:.3f} Å",
                                                          f"pristine c$_0$ {s['c_first_A']:.3f} Å"]


def test_xrd_figure_without_capacity_or_second_phase_still_draws(xrd):
    entry, _ = xrd
    cols = {k: v for k, v in entry["columns"].items() if not k.endswith("_2") and k != "capacity_mAh_g"}
    fig = figure_for("operando_xrd", {"columns": cols, "summary": {}})
    assert _panel(fig, "lattice parameter c").get_xlabel().startswith("time (h)")
    assert "phase 1" in fig.legends[0].get_texts()[0].get_text()


def test_save_figure_writes_a_complete_png_of_the_figure_size(xrd, tmp_path):
    _, fig = xrd
    out = save_figure(fig, tmp_path / "sub" / "xrd.png", dpi=50)
    assert out == str(tmp_path / "sub" / "xrd.png")
    w, h = _png_size(out)
    assert (w, h) == (round(fig.get_figwidth() * 50), round(fig.get_figheight() * 50))
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["xrd.png"]  # no .part left


# ---------------------------------------------------------------- SXDM


@pytest.fixture(scope="module")
def sxdm():
    arrays = sxdm_arrays()
    start = {"uid": "feedbeef00", "experiment": "sxdm", "material": "SC-NC91", "sample": "particle 3"}
    return arrays, figure_for("sxdm", sxdm_entry(arrays), arrays=arrays, start=start)


@pytest.mark.parametrize(("title", "key", "cmap"), [
    ("strain Δd/d", "strain", "RdBu_r"), ("rotation θxy", "tilt_xy_deg", "PuOr_r"),
    ("rotation θxz", "tilt_xz_deg", "PiYG")])
def test_sxdm_maps_diverging_centred_on_zero_with_colour_bars(sxdm, title, key, cmap):
    arrays, fig = sxdm
    ax = _panel(fig, title)
    (im,) = ax.images
    assert im.get_cmap().name == cmap
    lo, hi = im.get_clim()
    assert lo == pytest.approx(-hi) and hi > 0
    assert im.colorbar is not None and im.colorbar.ax.get_ylabel()
    scale = 1e3 if key == "strain" else 1.0
    np.testing.assert_allclose(im.get_array().filled(np.nan), arrays[key] * scale)
    assert [t.get_text() for t in ax.texts] == ["250 nm"]  # 28 px × 50 nm: a quarter, rounded


def test_sxdm_histograms_count_the_particle_pixels(sxdm):
    arrays, fig = sxdm
    n = int(arrays["mask"].sum())
    ax_h = _panel(fig, "strain histogram")
    assert sum(p.get_height() for p in ax_h.patches) == n
    assert ax_h.get_xlabel() == "strain Δd/d (10$^{-3}$)"
    std = np.std(arrays["strain"][arrays["mask"]]) * 1e3
    assert f"σ {std:.2f} ×10$^{{-3}}$" in ax_h.texts[0].get_text()
    ax_t = _panel(fig, "rotation histograms")
    assert [t.get_text().split(":")[0] for t in ax_t.get_legend().get_texts()] == ["θxy", "θxz"]
    assert ax_t.get_xlabel() == "rotation (deg)"
    title = fig.get_suptitle()
    assert "SC-NC91" in title and "particle 3" in title and "SXDM" in title and "50 nm" in title


def test_sxdm_rows_of_fly_lines_mapped_short_are_marked(sxdm):
    arrays, plain = sxdm
    short = np.array([[0, 3, 10], [4, 3, 2], [1, 17, 0]])  # [itheta, iy, frames]: rows 3 and 17
    fig = figure_for("sxdm", sxdm_entry(arrays), arrays=dict(arrays, incomplete_lines=short),
                     start={"uid": "feedbeef00", "experiment": "sxdm"})
    for title in ("intensity", "strain Δd/d", "rotation θxy", "rotation θxz"):
        marks = [ln for ln in _panel(fig, title).lines if ln.get_marker() == ">"]
        assert len(marks) == 1 and list(marks[0].get_ydata()) == [3, 17]
        assert all(x < -0.5 for x in marks[0].get_xdata())  # beside the map, not over it
        assert not [ln for ln in _panel(plain, title).lines if ln.get_marker() == ">"]
    assert "3 fly lines mapped short, rows marked ▸ (2 of" in fig.get_suptitle()
    assert "mapped short" not in plain.get_suptitle()


def test_figure_arrays_carry_the_incomplete_lines_of_the_maps_metadata(monkeypatch):
    from strainstream import results_doc

    maps = {"strain": np.zeros((2, 2))}
    monkeypatch.setattr(results_doc, "read_arrays", lambda root, uid, name: (maps, {"incomplete_lines": [[1, 0, 5]]}))
    out = results_doc.figure_arrays(None, "u", "sxdm")
    assert out["incomplete_lines"].tolist() == [[1, 0, 5]] and out["strain"] is maps["strain"]
    monkeypatch.setattr(results_doc, "read_arrays", lambda root, uid, name: (maps, {"incomplete_lines": []}))
    assert results_doc.figure_arrays(None, "u", "sxdm") == maps


# ---------------------------------------------------------------- TXM-XANES


@pytest.fixture(scope="module")
def txm():
    arrays = txm_arrays()
    outliers = arrays.pop("_outliers")
    start = {"uid": "cafe0000aa", "experiment": "txm_xanes", "material": "SC-NM91",
             "pixel_size_um": 0.04}
    return arrays, outliers, figure_for("txm_xanes", txm_entry(arrays), arrays=arrays, start=start)


def test_particle_mask_drops_isolated_pixels_only():
    valid = np.zeros((20, 20), bool)
    valid[2:12, 2:12] = True  # a particle of 100 px
    valid[15:17, 15:17] = True  # 4 px: below MIN_PARTICLE_PX
    valid[0, 19] = True
    kept = particle_mask(valid)
    assert kept.sum() == 100 and kept[2:12, 2:12].all()
    assert particle_mask(np.zeros((3, 3), bool)).sum() == 0


def test_txm_map_perceptual_with_scale_bar_and_outliers_hidden(txm):
    arrays, outliers, fig = txm
    ax = _panel(fig, "white-line energy")
    (im,) = ax.images
    assert im.get_cmap().name in ("viridis", "cividis") and im.get_cmap().name != "jet"
    assert im.colorbar.ax.get_ylabel() == "white-line energy (eV)"
    alpha = np.asarray(im.get_alpha())
    for iy, ix in outliers:
        assert alpha[iy, ix] == 0.0  # hidden
    particles = np.isfinite(arrays["whiteline_eV"])
    particles[tuple(outliers.T)] = False
    assert (alpha[particles] == 1.0).all()
    lo, hi = im.get_clim()
    assert 8348.5 < lo < hi < 8352.5  # the colour scale is the particles', not the outliers'
    # 80 px × 40 nm = 3.2 µm wide: a bar of 0.5 µm, no pixel ticks
    assert "500 nm" in [t.get_text() for t in ax.texts]
    assert not ax.get_xticks().size and ax.get_xlabel() == ""
    assert any("2 isolated pixels" in t.get_text() for t in ax.texts)


def test_txm_histogram_mean_and_std_of_the_particles(txm):
    arrays, outliers, fig = txm
    wl = arrays["whiteline_eV"].copy()
    wl[tuple(outliers.T)] = np.nan
    values = wl[np.isfinite(wl)]
    ax_h = fig.axes[1]
    assert sum(p.get_height() for p in ax_h.patches) == values.size
    (mean_line,) = ax_h.get_lines()
    assert mean_line.get_xdata()[0] == pytest.approx(values.mean())
    assert f"σ {values.std():.2f} eV" in ax_h.get_title()
    assert ax_h.get_xlabel() == "white-line energy (eV)"


def test_txm_without_pixel_size_has_pixel_axes():
    arrays = txm_arrays()
    arrays.pop("_outliers")
    fig = figure_for("txm_xanes", txm_entry(arrays), arrays=arrays)
    ax = fig.axes[0]
    assert ax.get_xlabel() == "x (pixel)" and not any("µm" in t.get_text() or "nm" in t.get_text()
                                                      for t in ax.texts if "isolated" not in t.get_text())


# ---------------------------------------------------------------- file commands' paths


def test_png_path_lands_beside_the_data_never_in_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert png_path("", "data/scan.h5", "sxdm_map") == str(tmp_path / "data" / "scan_sxdm_map.png")
    assert png_path(None, "/x/y/wl.h5", "whiteline") == "/x/y/wl_whiteline.png"
    assert png_path("fig.png", "/x/y/wl.h5", "whiteline") == "fig.png"  # asked for: as given
    (tmp_path / "figs").mkdir()
    assert png_path("figs", "/x/y/wl.h5", "whiteline") == "figs/wl_whiteline.png"
