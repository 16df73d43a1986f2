"""``demo --experiment study``: the comparisons drawn from the runs' result summaries."""

from __future__ import annotations

import math

from strainstream.study import XRD_REFERENCE, comparisons, format_comparisons, json_safe


def _xrd(material, c_max, c_last, v_change, two_phase=0, dc=0.0):
    return {"experiment": "operando_xrd", "material": material, "results": {"operando_xrd": {
        "c_contraction_pct": 100 * (c_max - c_last) / c_max, "volume_change_pct": v_change,
        "c_max_A": c_max, "c_last_A": c_last, "a_first_A": 2.87, "a_last_A": 2.81,
        "max_delta_c_A": dc, "two_phase_frames": two_phase, "max_microstrain": 1e-3,
        "frames_refined": 30}}}


def _sxdm(material, std):
    return {"experiment": "sxdm", "material": material, "results": {"sxdm": {
        "strain_std": std, "strain_range": 4 * std, "tilt_xy_std_deg": 0.02, "tilt_xz_std_deg": 0.02,
        "strain_tilt_correlation": -0.7, "n_pixels": 16}}}


def test_comparisons_of_the_study():
    runs = [_xrd("PC-NC91", 14.45, 13.583, -7.8), _xrd("SC-NM91", 14.45, 13.70, -7.0, 4, 0.68),
            _sxdm("SC-NC91", 0.0006), _sxdm("SC-NM91", 0.0018),
            {"experiment": "txm_xanes", "material": "NM91",
             "results": {"txm_xanes": {"whiteline_mean_eV": 8350.8, "whiteline_std_eV": 0.4}}}]
    comp = comparisons(runs)
    pc = comp["operando_xrd"]["PC-NC91"]
    assert math.isclose(pc["c_contraction_pct"], 6.0, abs_tol=1e-9)
    assert pc["volume_contraction_pct"] == 7.8  # contraction: the opposite of the signed change
    assert (pc["c_contraction_ref_pct"], pc["volume_contraction_ref_pct"]) == XRD_REFERENCE["PC-NC91"][:2]
    assert comp["sc_nm91_h2_h3_coexist"] is True
    assert math.isclose(comp["sxdm_strain_std_ratio_NM91_NC91"], 3.0)
    text = format_comparisons(comp)
    assert "PC-NC91" in text and "6.00" in text and "H2/H3 coexistence in SC-NM91: yes" in text
    assert "SC-NM91 / SC-NC91: 3.00" in text and "white line 8350.80 eV, std 0.40 eV" in text


def test_missing_results_give_nan_not_a_crash():
    comp = comparisons([{"experiment": "operando_xrd", "material": "SC-NC91", "results": {}},
                        {"experiment": "sxdm", "material": "SC-NM91", "results": {}}])
    assert math.isnan(comp["operando_xrd"]["SC-NC91"]["c_contraction_pct"])
    assert math.isnan(comp["sxdm_strain_std_ratio_NM91_NC91"])
    assert comp["sc_nm91_h2_h3_coexist"] is False
    assert "nan" in format_comparisons(comp)


def test_json_safe_replaces_nan_with_null():
    import json

    comp = comparisons([{"experiment": "sxdm", "material": "SC-NM91", "results": {}}])
    text = json.dumps(json_safe(comp), allow_nan=False)  # strict JSON: no NaN
    assert json.loads(text)["sxdm"]["SC-NM91"]["strain_std"] is None
