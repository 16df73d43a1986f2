"""TXM-XANES, live: absorbance previews while the energy scan runs, white-line maps at the end.

One result row per camera frame (``seq_num``, energy, role — dark / sample / flat —, energy
index, repeat, image mean and maximum, zone-plate and detector positions, magnification).
The frames themselves are kept in memory (one copy per frame in its stored dtype: 21
energies × (1 sample + 1 flat) + 5 darks of 128² float32 frames is 3 MB; a 2048² camera
needs 16 MB per frame, ~0.8 GB for such a scan — fine on a worker, but say so before
running 100-energy scans of a 2048² camera).

While the scan goes, each energy with both a sample image and a flat gives an absorbance
image ``-ln((I - dark) / (flat - dark))`` (same-energy flat, darks so far); the analysis
publishes (:meth:`AnalysisCallback.publish_arrays`) ``edge_jump`` — the absorbance at the
highest energy so far minus the mean pre-edge absorbance, once an energy above the pre-edge window
exists — and, once at least five energies exist and they span edge and white line, a
running ``whiteline_eV`` / ``mask`` (no registration, no magnification correction).

At the stop document (and at the end of every repeat of a time series) the full analysis
runs on the frames of the repeat, in ``seq_num`` order: darks averaged, per energy the
sample images and flats averaged, absorbance with the same-energy flat
(:func:`strainstream.xanes.absorbance_from_counts`), magnification correction from the
zone-plate/detector readbacks (M = (det_z − zp_z) / zp_z,
:func:`strainstream.xanes.correct_magnification`), registration
(:func:`strainstream.xanes.register_stack`) and the white-line analysis
(:func:`strainstream.xanes.analyse_whiteline`). Arrays ``whiteline_eV``, ``mask``,
``edge_jump`` (the last repeat; with ``repeats > 1`` also ``whiteline_eV_series`` (n_repeats,
ny, nx)) replace the previews; the summary holds ``whiteline_mean_eV``, ``whiteline_std_eV``,
``whiteline_median_eV``, ``n_voxels``, the histogram (``histogram_counts``,
``histogram_edges_eV``) and what was used (energies, darks, shifts, magnification).

Darks: a dark must be dark. If the mean dark is above ``max_dark_fraction`` (default 0.5) of
the mean flat (the shutter did not close, or a camera that ignores the shutter, like the
simulated endstation's), the darks are not used and ``dark_counts`` (default 0) is
subtracted instead; the summary says so (``dark_source``).

Resume and replay: results are a pure function of the event data and frames. Frames of
events already committed are collected again by :meth:`XANESCallback.restore` from the
documents a resumed worker is fed, so the final arrays are bit-identical to the live pass.

Start-document metadata used (written by :func:`strainstream.plans.xanes.txm_xanes`):
``txm_keys`` (event keys of frames, motors and the role/energy-index/repeat signals),
``energies_eV``, ``roles``, ``repeats``. Analysis parameters
(``analysis_parameters.txm_xanes``): ``min_edge_jump`` (0.1), ``bandwidth_eV`` (1.5),
``pre_edge_eV``, ``post_edge_eV``, ``bins`` (50), ``register`` (True),
``reference_energy_eV`` (registration reference; default: highest-contrast image),
``magnification`` (True), ``dark_counts`` (0.0), ``max_dark_fraction`` (0.5),
``preview`` (True).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from strainstream.rundesc import TXMKeys

from .base import AnalysisCallback, RunDocumentError, _single_thread, checked_number, checked_range

__all__ = ["XANESCallback"]

_DEFAULT_ROLES = {"dark": 0, "sample": 1, "flat": 2}


#: analysis parameters: default and check (see the module docstring)
_PARAMS: dict[str, tuple[Any, dict[str, Any]]] = {
    "min_edge_jump": (0.1, {}),
    "bandwidth_eV": (1.5, {"positive": True}),
    "bins": (50, {"integer": True, "minimum": 1}),
    "reference_energy_eV": (None, {"allow_none": True}),
    "dark_counts": (0.0, {}),
    "max_dark_fraction": (0.5, {}),
}
_FLAGS = {"register": True, "magnification": True, "preview": True}
_MAX_BINS = 100_000
#: largest index or repeat number taken from event data (beyond it the value is garbage)
_MAX_INDEX = 2**31


def _num(data: dict[str, Any], key: str | None) -> float:
    """Event value ``key`` as float; NaN when absent or not a number (strings, lists, bools)."""
    value = data.get(key) if isinstance(key, str) else None
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        return math.nan
    return float(value)


def _index(value: float) -> int:
    """A non-negative index from event data; -1 when missing, negative, fractional or huge."""
    if not math.isfinite(value) or value < 0 or value >= _MAX_INDEX or not value.is_integer():
        return -1
    return int(value)


class XANESCallback(AnalysisCallback):
    """Absorbance previews per energy and the white-line map of a TXM-XANES scan."""

    name = "txm_xanes"
    version = "1"
    columns = {
        "energy_eV": "float64",
        "role": "string",
        "energy_index": "int64",
        "repeat": "int64",
        "image_mean": "float64",
        "image_max": "float64",
        "zp_z_mm": "float64",
        "det_z_mm": "float64",
        "magnification": "float64",
    }

    # -- set-up --------------------------------------------------------------------------
    def on_start(self, doc) -> None:
        uid = doc["uid"]
        try:
            self.keys = TXMKeys.from_start(doc).to_start()
        except ValueError as exc:
            raise RunDocumentError(f"run {uid}: {exc}") from None
        self.frame_keys = (self.keys["frames"],)
        roles = doc.get("roles") or _DEFAULT_ROLES
        if not isinstance(roles, dict):
            raise RunDocumentError(f"run {uid}: 'roles' must map dark/sample/flat to codes, got {roles!r}")
        self.role_names = {checked_number(v, f"run {uid}: roles.{k}", integer=True): k
                           for k, v in roles.items()}
        planned = doc.get("energies_eV")
        if planned is not None:
            if not isinstance(planned, list | tuple):
                raise RunDocumentError(f"run {uid}: 'energies_eV' must be a list of energies, got {planned!r}")
            planned = [checked_number(x, f"run {uid}: energies_eV") for x in planned]
        self.planned_eV = planned or None
        self.n_repeats = checked_number(doc.get("repeats", 1) or 1, f"run {uid}: repeats", integer=True,
                                        minimum=1)
        self._opts = {k: self.param_number(k, default, **checks) for k, (default, checks) in _PARAMS.items()}
        if self._opts["bins"] > _MAX_BINS:
            raise RunDocumentError(f"analysis_parameters.txm_xanes.bins must be ≤ {_MAX_BINS}, "
                                   f"got {self._opts['bins']}")
        self._opts.update({k: self.param_flag(k, default) for k, default in _FLAGS.items()})
        for k in ("pre_edge_eV", "post_edge_eV"):
            self._opts[k] = checked_range(self.parameters.get(k), f"analysis_parameters.txm_xanes.{k}")
        self.store: dict[int, dict[str, Any]] = {}  # seq_num -> {role, ie, repeat, energy, mag, frame}
        self._results: dict[int, dict[str, Any]] = {}  # repeat -> final analysis
        self._preview_abs: dict[tuple[int, int], np.ndarray] = {}

    def _param(self, key: str, default):
        """A checked analysis parameter (see on_start)."""
        return self._opts.get(key, default)

    # -- resume: the frames of committed events go into the stacks again ------------------
    def restore(self, event: dict, row: dict[str, Any]) -> None:
        """A committed event: its frame back into the stacks and the preview cache (no row)."""
        frames = self.committed_frames(int(event["seq_num"]))
        if frames is None or self.keys["frames"] not in frames:
            return  # its committed row carries the flag; nothing to rebuild
        frame = np.asarray(frames[self.keys["frames"]])
        if self._unusable(frame, self._describe(event)):
            return  # flagged in the first pass too: not in the stacks
        info = self._keep(event, frame)
        if info["role"] in ("sample", "flat") and self._param("preview", True):
            self._preview(info, publish=False)  # previews after a restart cover every energy

    # -- per event -----------------------------------------------------------------------
    def _describe(self, event: dict) -> dict[str, Any]:
        data = event.get("data")
        data = data if isinstance(data, dict) else {}
        role_code = _num(data, self.keys["role"])
        role = self.role_names.get(int(role_code), "") if role_code.is_integer() else ""
        rep = _num(data, self.keys["repeat"])
        zp, det = _num(data, self.keys["zp_z"]), _num(data, self.keys["det_z"])
        try:
            mag = (det - zp) / zp if zp > 0 and det > zp else math.nan
        except OverflowError:
            mag = math.nan
        return {"role": role, "ie": _index(_num(data, self.keys["ienergy"])),
                "repeat": 0 if math.isnan(rep) else _index(rep),
                "energy": _num(data, self.keys["energy"]), "zp": zp, "det": det,
                "mag": mag if math.isfinite(mag) else math.nan}

    def _unusable(self, frame: np.ndarray, info: dict[str, Any]) -> tuple[str, str] | None:
        """(flag, message) when a frame cannot go into the stacks; None when it can."""
        if frame.ndim != 2:
            return "bad_shape", f"camera frame has shape {frame.shape}, expected (rows, cols)"
        if info["repeat"] < 0:
            return "bad_repeat", f"event has no valid repeat number {self.keys['repeat']!r}; frame not used"
        first = next((v["frame"].shape for v in self.store.values()), frame.shape)
        if frame.shape != first:
            return "bad_shape", f"camera frame has shape {frame.shape}, the run's frames {first}; frame not used"
        return None

    def _keep(self, event: dict, frame: np.ndarray) -> dict[str, Any]:
        info = self._describe(event)
        info["frame"] = np.array(frame, copy=True)
        self.store[int(event["seq_num"])] = info
        return info

    def analyse(self, event: dict, frames: dict[str, np.ndarray]) -> dict[str, Any]:
        from strainstream.framestats import FrameError

        key = self.keys["frames"]
        if key not in frames:
            raise FrameError("no_frame", f"the run has no camera frames under {key!r} (txm_keys.frames)")
        frame = np.asarray(frames[key])
        problem = self._unusable(frame, self._describe(event))
        if problem:
            raise FrameError(*problem)
        info = self._keep(event, frame)
        finite = np.isfinite(frame)
        row = {
            "energy_eV": info["energy"], "role": info["role"], "energy_index": info["ie"],
            "repeat": info["repeat"], "zp_z_mm": info["zp"], "det_z_mm": info["det"],
            "magnification": info["mag"],
            "image_mean": float(frame[finite].mean()) if finite.any() else math.nan,
            "image_max": float(frame[finite].max()) if finite.any() else math.nan,
        }
        if not info["role"]:
            row.update(flag="no_role", message=f"event has no valid {self.keys['role']!r}; frame not used")
        elif info["role"] in ("sample", "flat") and info["ie"] < 0:
            row.update(flag="no_energy_index", message=f"{info['role']} image without a valid "
                       f"{self.keys['ienergy']!r}; frame not used")
        elif not finite.all():
            row.update(flag="nonfinite", message=f"{int((~finite).sum())} non-finite pixels (masked)")
        seq = int(event["seq_num"])
        if info["role"] in ("sample", "flat") and self._param("preview", True):
            self._preview(info)
        if info["role"] and self._repeat_finished(seq, info):
            self._final(info["repeat"] - 1)
        return row

    def _repeat_finished(self, seq: int, info: dict[str, Any]) -> bool:
        """True at the first frame of repeat r > 0: repeat r - 1 is complete."""
        prev = self.previous_row(seq)
        return bool(info["repeat"] > 0 and prev is not None and prev["repeat"] == info["repeat"] - 1
                    and (info["repeat"] - 1) not in self._results)

    # -- assembling stacks -----------------------------------------------------------------
    def _dark(self, repeat: int) -> tuple[np.ndarray | float, str, int]:
        """Mean dark (or the ``dark_counts`` fallback), where it came from, frames used."""
        darks = [v["frame"] for k, v in sorted(self.store.items()) if v["role"] == "dark"]
        fallback = float(self._param("dark_counts", 0.0))
        if not darks:
            return fallback, "dark_counts parameter (no dark frames)", 0
        dark = np.mean(np.stack(darks).astype(np.float64), axis=0)
        flats = [v["frame"] for k, v in sorted(self.store.items())
                 if v["role"] == "flat" and v["repeat"] == repeat]
        if flats:  # mean of per-frame means: no stacking of the flats
            flat_mean = float(np.mean([np.nanmean(f) for f in flats]))
            frac = float(np.nanmean(dark)) / flat_mean if flat_mean > 0 else math.inf
            if not frac < float(self._param("max_dark_fraction", 0.5)):
                return (fallback, f"dark_counts parameter (dark frames rejected: mean dark is "
                        f"{frac:.2f} of the mean flat; shutter not closed?)", len(darks))
        return dark, "frames", len(darks)

    def _groups(self, repeat: int) -> dict[int, dict[str, list]]:
        """Energy index -> {"sample": [...], "flat": [...], "energy": [...], "mag": [...]}, seq order."""
        out: dict[int, dict[str, list]] = {}
        for _, v in sorted(self.store.items()):
            if v["repeat"] != repeat or v["role"] not in ("sample", "flat") or v["ie"] < 0:
                continue
            g = out.setdefault(v["ie"], {"sample": [], "flat": [], "energy": [], "mag": []})
            g[v["role"]].append(v["frame"])
            if v["role"] == "sample":
                g["energy"].append(v["energy"])
                g["mag"].append(v["mag"])
        return {k: g for k, g in out.items() if g["sample"] and g["flat"]}

    def _energy(self, ie: int, g: dict[str, list]) -> float:
        if self.planned_eV is not None and 0 <= ie < len(self.planned_eV):
            return self.planned_eV[ie]
        return float(np.mean(g["energy"]))

    def _stacks(self, repeat: int):
        groups = self._groups(repeat)
        order = sorted(groups, key=lambda ie: self._energy(ie, groups[ie]))
        energies = np.array([self._energy(ie, groups[ie]) for ie in order])
        stack = np.stack([np.mean(np.stack(groups[ie]["sample"]).astype(np.float64), axis=0) for ie in order])
        flats = np.stack([np.mean(np.stack(groups[ie]["flat"]).astype(np.float64), axis=0) for ie in order])
        mags = np.array([float(np.mean(groups[ie]["mag"])) for ie in order])
        return energies, stack, flats, mags

    # -- preview -----------------------------------------------------------------------------
    def _preview(self, info: dict[str, Any], publish: bool = True) -> None:
        """Cache this energy's absorbance image; publish the preview maps (if ``publish``)."""
        from strainstream import xanes

        rep, groups = info["repeat"], self._groups(info["repeat"])
        if info["ie"] not in groups:
            return
        g = groups[info["ie"]]
        sample = np.mean(np.stack(g["sample"]).astype(np.float64), axis=0)
        flat = np.mean(np.stack(g["flat"]).astype(np.float64), axis=0)
        dark = np.broadcast_to(np.asarray(self._dark(rep)[0], dtype=np.float64), sample.shape)
        # one energy at a time: cached, so a preview costs one image, not the whole stack
        self._preview_abs[(rep, info["ie"])] = (
            self._energy(info["ie"], g), xanes.absorbance_from_counts(sample[None], flat[None], dark)[0])
        done = sorted((v for (r, _), v in self._preview_abs.items() if r == rep), key=lambda t: t[0])
        if len(done) < 2 or not publish:
            return
        energies = np.array([t[0] for t in done])
        a = np.stack([t[1] for t in done])
        e0, span = energies[0], (self.planned_eV[-1] - self.planned_eV[0] if self.planned_eV else 0.0)
        span = span or (energies[-1] - energies[0])
        pre = energies <= e0 + 0.1 * abs(span) + 1e-9
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, Any] = {"stage": "preview", "energies_done": int(energies.size),
                                "repeat": int(info["repeat"])}
        if pre.any() and not pre[-1]:
            with np.errstate(invalid="ignore"):
                arrays["edge_jump"] = a[-1] - np.nanmean(a[pre], axis=0)
            meta["edge_jump_at_eV"] = float(energies[-1])
        if energies.size >= 5:
            try:
                res = xanes.analyse_whiteline(energies, a, **self._wl_kwargs())
            except (xanes.XanesInputError, np.linalg.LinAlgError):
                res = None  # not enough of the edge and white line yet
            if res is not None:
                arrays["whiteline_eV"] = res.whiteline_eV
                arrays["mask"] = res.mask
                meta["whiteline_mean_eV"] = res.stats.mean_eV
        if arrays:
            self.publish_arrays(arrays, meta)

    def _wl_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"min_edge_jump": self._param("min_edge_jump", 0.1),
                              "bandwidth_eV": self._param("bandwidth_eV", 1.5),
                              "bins": self._param("bins", 50)}
        for k in ("pre_edge_eV", "post_edge_eV"):
            if self._param(k, None) is not None:
                kw[k] = self._param(k, None)
        return kw

    # -- full analysis -------------------------------------------------------------------------
    def _final(self, repeat: int) -> None:
        from strainstream import xanes

        out: dict[str, Any] = {"repeat": repeat}
        self._results[repeat] = out
        groups = self._groups(repeat)
        if len(groups) < 5:
            out["analysis_error"] = (f"{len(groups)} energies with both a sample image and a flat; "
                                     "the white-line analysis needs at least 5")
            return
        energies, stack, flats, mags = self._stacks(repeat)
        dark, dark_source, n_darks = self._dark(repeat)
        darks = np.broadcast_to(np.asarray(dark, dtype=np.float64), stack.shape[1:])
        out.update(energies_eV=[float(x) for x in energies], dark_source=dark_source, n_darks=n_darks)
        try:
            a = xanes.absorbance_from_counts(stack, flats, darks)
            if self._param("magnification", True) and np.all(np.isfinite(mags)):
                a = xanes.correct_magnification(a, mags)
                out["magnification"] = [float(m) for m in mags]
            if self._param("register", True):
                ref = self._param("reference_energy_eV", None)
                ref_idx = None if ref is None else int(np.argmin(np.abs(energies - float(ref))))
                reg = xanes.register_stack(a, reference_index=ref_idx)
                a = reg.aligned
                out["shifts_px"] = [[float(x) for x in s] for s in reg.shifts_px]
                out["reference_energy_eV"] = float(energies[reg.reference_index])
            res = xanes.analyse_whiteline(energies, a, **self._wl_kwargs())
        except (xanes.XanesInputError, np.linalg.LinAlgError) as exc:
            # the rows are committed already; the run still gets its summary, with the reason
            out["analysis_error"] = f"{type(exc).__name__}: {exc}"
            return
        st = res.stats
        out.update(
            whiteline_mean_eV=st.mean_eV, whiteline_std_eV=st.std_eV, whiteline_median_eV=st.median_eV,
            n_voxels=st.n_voxels, histogram_counts=[int(c) for c in st.histogram_counts],
            histogram_edges_eV=[float(x) for x in st.bin_edges_eV],
            edge_reference_eV=res.edge_reference_eV, voxel_counts=dict(res.counts),
        )
        out["_arrays"] = {"whiteline_eV": res.whiteline_eV, "mask": res.mask, "edge_jump": res.edge_jump}
        arrays = dict(out["_arrays"])
        series = [self._results[r]["_arrays"]["whiteline_eV"] for r in sorted(self._results)
                  if "_arrays" in self._results[r]]
        if self.n_repeats > 1:
            arrays["whiteline_eV_series"] = np.stack(series)
        self.publish_arrays(arrays, {"stage": "final", "repeat": repeat,
                                     "energies_done": int(energies.size)})

    def summary(self) -> dict[str, Any]:
        with _single_thread():  # same bits on any machine (see AnalysisCallback._process)
            repeats = sorted({v["repeat"] for v in self.store.values() if v["role"] in ("sample", "flat")})
            for r in repeats:
                if r not in self._results:
                    self._final(r)
        by_role = {r: sum(1 for row in self.rows if row["role"] == r) for r in ("dark", "sample", "flat")}
        summ: dict[str, Any] = {"frames": len(self.rows), **{f"n_{k}": v for k, v in by_role.items()},
                                "frames_flagged": sum(1 for row in self.rows if row["flag"])}
        if not self._results:
            summ["analysis_error"] = "no sample images with flats"
            return summ
        last = self._results[max(self._results)]
        summ.update({k: v for k, v in last.items() if not k.startswith("_")})
        if len(self._results) > 1:
            summ["whiteline_mean_eV_series"] = [self._results[r].get("whiteline_mean_eV", math.nan)
                                                for r in sorted(self._results)]
            summ["whiteline_std_eV_series"] = [self._results[r].get("whiteline_std_eV", math.nan)
                                               for r in sorted(self._results)]
        return summ
