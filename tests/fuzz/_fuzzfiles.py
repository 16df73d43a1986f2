"""Input files for the CLI fuzz tests: small valid files and their corruptions.

An HDF5 input is described by a *spec* ``{"datasets": {name: array}, "attrs": {...}}``; a
corruption is a tuple ``(kind, target, arg)`` applied to the spec (dataset replaced by
something of the wrong shape/dtype, NaN/inf/huge values, a huge declared shape, a missing
dataset or attribute) or to the written file (truncated, garbage, empty, a directory).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np

#: dataset-level corruptions
DATASET_KINDS = ("delete", "group", "scalar", "flatten", "add_axis", "drop_axis", "int8", "uint32",
                 "bool", "complex", "string", "compound", "nan", "nan_all", "inf", "huge_values",
                 "negative", "zeros", "reverse", "truncate_axis0", "huge_shape", "huge_axis0")
#: file-level corruptions
FILE_KINDS = ("truncated", "garbage", "empty", "directory", "missing")
ATTR_VALUES: list[Any] = ["abc", math.nan, math.inf, -1.0, 0.0, 1e308, [1.0, 2.0, 3.0], True]


def corrupt_spec(spec: dict[str, Any], kind: str, target: str, arg: int) -> dict[str, Any]:
    """A copy of ``spec`` with dataset ``target`` corrupted by ``kind``."""
    spec = copy.deepcopy(spec)
    ds = spec["datasets"]
    if target not in ds or not isinstance(ds[target], np.ndarray | np.generic):
        return spec  # deleted, a group or a huge declaration already: keep that corruption
    a = np.asarray(ds[target])
    if a.dtype.kind not in "biuf":
        return spec  # complex, strings, records already
    if kind == "delete":
        del ds[target]
    elif kind == "group":
        ds[target] = "<group>"
    elif kind == "scalar":
        ds[target] = np.float64(arg)
    elif kind == "flatten":
        ds[target] = a.ravel()
    elif kind == "add_axis":
        ds[target] = a[None]
    elif kind == "drop_axis":
        ds[target] = a[0] if a.ndim else a
    elif kind in ("int8", "uint32", "bool"):
        with np.errstate(invalid="ignore", over="ignore"):
            ds[target] = np.nan_to_num(a.astype(np.float64)).astype(kind)
    elif kind == "complex":
        ds[target] = a.astype(np.complex128) * (1 + 1j)
    elif kind == "string":
        ds[target] = np.array([b"abc"] * max(a.size, 1), dtype="S3").reshape(a.shape or (1,))
    elif kind == "compound":
        ds[target] = np.zeros(a.shape, dtype=[("a", "<f4"), ("b", "<i2")])
    elif kind in ("nan", "inf", "huge_values", "negative"):
        b = a.astype(np.float64).copy()
        value = {"nan": math.nan, "inf": math.inf, "huge_values": 1e308, "negative": -1e6}[kind]
        if b.ndim:
            b.reshape(-1)[arg % b.size :: max(1, b.size // 7)] = value
        else:
            b = np.float64(value)
        ds[target] = b
    elif kind == "nan_all":
        ds[target] = np.full(a.shape, math.nan)
    elif kind == "zeros":
        ds[target] = np.zeros(a.shape)
    elif kind == "reverse":
        ds[target] = a[::-1] if a.ndim else a
    elif kind == "truncate_axis0":
        ds[target] = a[: arg % max(a.shape[0], 1)] if a.ndim else a
    elif kind == "huge_shape":  # the last two axes declared 50000 x 50000, nothing stored
        shape = (a.shape[:-2] if a.ndim >= 2 else (max(a.size, 1),)) + (50_000, 50_000)
        ds[target] = ("<huge>", shape, a.dtype if a.dtype.kind in "biuf" else np.float64)
    elif kind == "huge_axis0":
        shape = (10**9,) + a.shape[1:]
        ds[target] = ("<huge>", shape, a.dtype if a.dtype.kind in "biuf" else np.float64)
    return spec


def corrupt_attr(spec: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    spec = copy.deepcopy(spec)
    if value == "<delete>":
        spec["attrs"].pop(key, None)
    else:
        spec["attrs"][key] = value
    return spec


def write_spec(path: Path, spec: dict[str, Any]) -> None:
    with h5py.File(path, "w") as f:
        for k, v in spec.get("attrs", {}).items():
            f.attrs[k] = v
        for name, v in spec["datasets"].items():
            if isinstance(v, str) and v == "<group>":
                f.create_group(name)
            elif isinstance(v, tuple) and v and isinstance(v[0], str) and v[0] == "<huge>":
                _, shape, dtype = v
                chunks = tuple(min(int(n), 64) for n in shape)
                f.create_dataset(name, shape=shape, dtype=dtype, chunks=chunks)
            else:
                f.create_dataset(name, data=v)


def corrupt_file(path: Path, kind: str, arg: int) -> None:
    """Damage a written file in place."""
    if kind == "truncated":
        size = path.stat().st_size
        with open(path, "r+b") as fh:
            fh.truncate(max(1, size * (arg % 9 + 1) // 10))
    elif kind == "garbage":
        path.write_bytes(np.random.default_rng(arg).bytes(2048))
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.unlink()
        path.mkdir()
    elif kind == "missing":
        path.unlink()


def sxdm_spec() -> dict[str, Any]:
    """A 5-angle, 4x4-raster, 16x16-pixel SXDM file spec."""
    from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm, write_sxdm_file

    sim = simulate_sxdm(particle_preset("SC-NM91", "charged", ny=4, nx=4, seed=2), shape=(16, 16),
                        n_theta=5, theta_range_deg=1.2, seed=4)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "s.h5"
        write_sxdm_file(p, sim.all_frames(), sim.theta_deg, sim.metadata)
        with h5py.File(p, "r") as f:
            return {"datasets": {k: f[k][()] for k in f}, "attrs": dict(f.attrs)}


def txm_spec() -> dict[str, Any]:
    """A 7-energy raw-counts TXM stack spec (24x24)."""
    from strainstream.sim import txm_images as T

    scan = T.simulate_txm_scan(np.linspace(8330.0, 8370.0, 7),
                               sample=T.particle_sample((24, 24), voxel_size_um=0.2), seed=3)
    return {"datasets": {"energies_eV": scan.energies_eV, "stack": scan.stack, "flats": scan.flats,
                         "darks": scan.darks, "magnification": scan.magnification},
            "attrs": {}}


def xrd_pattern_text(q_min: float = 0.8, q_max: float = 6.0, n: int = 1500) -> str:
    """A two-column pattern (Q, counts) of a layered oxide (a 2.87 Å, c 14.2 Å) + Al."""
    q = np.linspace(q_min, q_max, n)
    a, c = 2.87, 14.2
    y = 200.0 + np.zeros_like(q)
    for h in range(0, 4):
        for k in range(0, 4):
            for ll in range(0, 16):
                if (h, k, ll) == (0, 0, 0) or (-h + k + ll) % 3:
                    continue
                d = 1 / math.sqrt(4 * (h * h + h * k + k * k) / (3 * a * a) + ll * ll / (c * c))
                q0 = 2 * math.pi / d
                if q_min < q0 < q_max:
                    y += 5e4 / (1 + h + k + ll) * np.exp(-0.5 * ((q - q0) / 0.006) ** 2)
    y = np.random.default_rng(0).poisson(y).astype(float)
    return "".join(f"{x:.6f} {v:.1f}\n" for x, v in zip(q, y, strict=True))
