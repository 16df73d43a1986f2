"""Endstation IOC: sample/optics motors, monochromator energy, SXDM pixel detector, TXM camera.

The two detectors live in the process that holds the positions they depend on, so a frame
is computed from the motor readbacks at the moment of ``Acquire`` without any CA round trip.

Motors: one EPICS motor record each, ``<prefix>ES:<motor>`` (fields ``.VAL``, ``.RBV``, ``.DMOV``,
``.MOVN``, ``.STOP``, ``.SPMG``, ``.VELO``, ``.HLM``/``.LLM``, ``.HLS``/``.LLS``, ``.MSTA``, ``.SET``,
``.OFF``, ``.DIR``, ``.HOMF``/``.HOMR``, ``.EGU``, ``.DESC``, ...: what ophyd's ``EpicsMotor`` uses,
see :func:`~strainstream.devices.ioc._motor.motor_group`); home position 0 or the nearer soft
limit, hard limit switches 5 % of the soft range beyond the soft limits:

================  ====  ========================  ===============  ===========
motor             egu   initial                   soft limits      speed
================  ====  ========================  ===============  ===========
sample_x, _y, _z  um    0                         ±100             50 um/s
theta             deg   θ_B(003) at 8350 eV       0 … 30           2 deg/s
zp_z              mm    zone-plate focus, 8350 eV 40 … 65          2 mm/s
det_z             mm    1000                      300 … 2000       100 mm/s
sample_inout      mm    0 (in; out if |x| ≥ 0.5)  −1 … 10          10 mm/s
energy            eV    8350                      5000 … 25000     500 eV/s
================  ====  ========================  ===============  ===========

SXDM detector (``<prefix>SXDM:``): a crop (default 64², up to the 256² pixel array) around
the (003) reflection of one particle (:func:`strainstream.sim.sxdm_frames.particle_preset`,
default SC-NM91 "charged", 32×32 raster, 50 nm step). The beam sits at raster coordinates
``(sample_y, sample_x) · 1000 / step_nm`` (µm → steps, fractional allowed), the rocking angle is
the ``theta`` readback, the photon energy the ``energy`` readback; the detector arm is placed
at 2θ_B of the mean d-spacing for that energy (as :func:`simulate_sxdm` does). Expected counts
are the forward model's 3-D Gaussian around the local Q (evaluated for this one raster point:
same formula as :meth:`SXDMSimulation.expected_frames`), then Poisson noise (``Noise=1``) or
rounding. There is no sample drift in the IOC (drift comes from moving the motors). While no
photons arrive (``SIM:BeamGate`` = 1, see below) a frame is all zeros: a photon-counting
detector has no dark current.

TXM camera (``<prefix>TXM:``): :func:`strainstream.sim.txm_images.simulate_txm_scan` for one
energy (the ``energy`` readback), the zone plate fixed at the ``zp_z`` readback (defocus blur
when it is not at the focus of that energy), no drift; the image is the sample image when the
sample is in, the flat field when it is out. Default 128² (``--txm-shape``). The model is
evaluated noise-free with the fixed seed ``Seed`` (its flat-field beam structure depends on
the seed, and flats must match sample images); with ``Noise=1`` the IOC then draws the
model's noise itself per frame: Poisson(expected − dark) + dark + N(0, 2 counts). While no
photons arrive (``SIM:BeamGate`` = 1, see below) a frame is the model's dark current
(``darks``, ≈100 counts) plus, with ``Noise=1``, the read noise N(0, 2 counts): what the camera
records with the shutter closed.

Fly scans: with ``SXDM:cam1:TriggerMode`` External, ``Acquire`` = 1 arms the detector and its
trigger input is wired to the endstation controller's motion output of ``sample_x``: the series
of ``NumImages`` frames starts when the next ``sample_x`` motion starts, frame ``i`` exposed
from ``t_start + i · AcquirePeriod`` for ``AcquireTime`` (detector clock), and computed for
where the stage was at mid-exposure (the motor record's motion is exact in time). A fly line at
``VELO = step / AcquirePeriod`` starting half a step before the first raster point therefore
puts frame ``i`` on raster point ``i``. Frames are computed as fast as the host allows and never
before their exposure ended; the HDF5 plugin writes them in batches. The positions of every
frame are in its NDAttributes, as with Internal triggers.

Both detectors have the beam gate of
:class:`~strainstream.devices.ioc._common.BeamGateMixin` (simulation controls, no real detector
has them): ``SIM:BeamGate`` (default 0: the detectors ignore the beam), ``SIM:BeamMin_mA``,
``SIM:BeamOn_RBV``. With ``BeamGate`` = 1 no photons arrive while the beam IOC's ring current is
below ``BeamMin_mA`` or its shutter is not Open.

Per-frame state in each HDF5 file (``/entry/instrument/NDAttributes``): SXDM sample_x_um,
sample_y_um, theta_deg, energy_eV, counter, beam_on; TXM energy_eV, zp_z_mm, sample_in,
counter, beam_on (1: photons reached the detector, 0: a beam-off frame).

Run: ``python -m strainstream.devices.ioc endstation --prefix SS: --port 5071 --write-dir DIR``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import threading
from collections import OrderedDict

import numpy as np
from caproto.server import PVGroup, SubGroup

from ._common import AreaDetectorGroup, BeamGateMixin, add_common_args, serve
from ._motor import motor_group

__all__ = ["EndstationIOC", "MOTORS", "SXDMDetector", "TXMCamera", "build", "main",
           "pixel_q_components", "point_q", "sxdm_point_counts", "sxdm_point_expected", "theta_bragg_deg",
           "zp_focus_mm"]

HC_EV_A = 12398.419843
ENERGY0_EV = 8350.0
SXDM_C_A = 13.70  # c of the default ("charged") SXDM particle
READ_NOISE_COUNTS = 2.0  # TXM camera read noise (simulate_txm_scan's default)


def theta_bragg_deg(energy_eV: float, d_A: float = SXDM_C_A / 3.0) -> float:
    """Bragg angle (deg) of spacing ``d_A`` (Å) at ``energy_eV``."""
    return math.degrees(math.asin(HC_EV_A / energy_eV / (2.0 * d_A)))


def zp_focus_mm(energy_eV: float) -> float:
    """Sample-to-zone-plate distance (mm) in focus at ``energy_eV`` (default FXI optics)."""
    from strainstream.xanes import zone_plate_optics

    return float(zone_plate_optics(np.array([float(energy_eV)])).sample_to_zp_m[0] * 1e3)


#: name -> (egu, initial, low limit, high limit, speed, description)
MOTORS: dict[str, tuple] = {
    "sample_x": ("um", 0.0, -100.0, 100.0, 50.0, "sample x"),
    "sample_y": ("um", 0.0, -100.0, 100.0, 50.0, "sample y"),
    "sample_z": ("um", 0.0, -100.0, 100.0, 50.0, "sample z"),
    "theta": ("deg", round(theta_bragg_deg(ENERGY0_EV), 4), 0.0, 30.0, 2.0, "rocking angle"),
    "zp_z": ("mm", None, 40.0, 65.0, 2.0, "zone plate z"),
    "det_z": ("mm", 1000.0, 300.0, 2000.0, 100.0, "detector z"),
    "sample_inout": ("mm", 0.0, -1.0, 10.0, 10.0, "sample in(0)/out"),
    "energy": ("eV", ENERGY0_EV, 5000.0, 25000.0, 500.0, "monochromator energy"),
}


def _motor(name: str):
    egu, init, lo, hi, velo, desc = MOTORS[name]
    if init is None:
        init = round(zp_focus_mm(ENERGY0_EV), 5)
    return SubGroup(motor_group(name, egu, init, lo, hi, velo, desc), prefix=f"ES:{name}")


def sxdm_point_expected(sim, y_px: float, x_px: float, theta_deg: float, *,
                        q: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                        point: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """Expected counts (rows, cols) of an SXDM simulation with the beam at one raster point.

    Parameters
    ----------
    sim : strainstream.sim.sxdm_frames.SXDMSimulation
    y_px, x_px : float
        Raster coordinates (steps; fractional allowed).
    theta_deg : float
        Rocking angle (deg).
    q : (qx, qy, qz), optional
        The pixels' sample-frame Q at ``theta_deg`` (:func:`pixel_q_components`), when cached.
    point : (mu, weight), optional
        The particle's local Q and weight at the point (:func:`point_q`), when cached.
    """
    qx, qy, qz = q if q is not None else pixel_q_components(sim, theta_deg)
    mu, w = point if point is not None else point_q(sim, y_px, x_px)
    acc = _peak_exponent(sim, (qx, qy, qz), mu, slice(None))
    np.exp(acc, out=acc)
    acc *= sim.peak_max_counts * w
    acc += sim.background_counts
    return acc.reshape(sim.shape)


def _peak_exponent(sim, comps, mu, sl) -> np.ndarray:
    """The forward model's Gaussian exponent −½ Σ_j (q_j − μ_j)² / σ_j² on ``comps[j][sl]``
    (the pixels' sample-frame Q components), term by term in place (a new array)."""
    prec = np.array([sim.sigma_par_A_inv, sim.sigma_perp_A_inv, sim.sigma_perp_A_inv]) ** -2.0
    acc = np.subtract(comps[0][sl], mu[0])
    np.multiply(acc, acc, out=acc)
    acc *= prec[0]
    tmp = np.empty_like(acc)
    for comp, m, p in ((comps[1], mu[1], prec[1]), (comps[2], mu[2], prec[2])):
        np.subtract(comp[sl], m, out=tmp)
        np.multiply(tmp, tmp, out=tmp)
        tmp *= p
        acc += tmp
    acc *= -0.5
    return acc


#: pixel stride of the coarse pass that finds where a frame's Bragg peak lies, and the
#: expected counts (above the background) below which a pixel is left to the background
_PEAK_STRIDE = 4
_PEAK_FLOOR_COUNTS = 1e-6


def sxdm_point_counts(sim, y_px: float, x_px: float, theta_deg: float, rng: np.random.Generator, *,
                      q: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                      point: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """A Poisson draw (uint32, rows × cols) of :func:`sxdm_point_expected`, at detector rates.

    The same statistics as ``rng.poisson(sxdm_point_expected(...))``, drawn as two independent
    Poisson fields whose sum it is: the flat background (its total count drawn once and spread
    over uniformly random pixels — the Poisson–multinomial identity, so every pixel is
    Poisson(background), independent) plus the Bragg peak's counts drawn only where the peak
    lies (a box found on a coarse pixel grid; outside it the peak expects fewer than
    ``_PEAK_FLOOR_COUNTS`` per pixel). About 0.2 ms for a 256² frame instead of 1.5 ms: the
    peak covers ~2 % of the detector. Not the same random numbers as the slow draw.
    """
    qx, qy, qz = q if q is not None else pixel_q_components(sim, theta_deg)
    mu, w = point if point is not None else point_q(sim, y_px, x_px)
    rows, cols = sim.shape
    npix = rows * cols
    total = rng.poisson(sim.background_counts * npix)
    counts = np.bincount(rng.integers(0, npix, total), minlength=npix).astype(np.uint32).reshape(rows, cols)
    amp = sim.peak_max_counts * w
    if not amp > _PEAK_FLOOR_COUNTS:
        return counts
    comps = tuple(c.reshape(rows, cols) for c in (qx, qy, qz))
    k = _PEAK_STRIDE
    coarse = _peak_exponent(sim, comps, mu, (slice(None, None, k), slice(None, None, k)))
    hit = np.nonzero(coarse > math.log(_PEAK_FLOOR_COUNTS / amp))
    if hit[0].size == 0:
        return counts
    r0, r1 = max(int(hit[0].min()) * k - 2 * k, 0), min(int(hit[0].max()) * k + 2 * k + 1, rows)
    c0, c1 = max(int(hit[1].min()) * k - 2 * k, 0), min(int(hit[1].max()) * k + 2 * k + 1, cols)
    box = (slice(r0, r1), slice(c0, c1))
    counts[box] += rng.poisson(amp * np.exp(_peak_exponent(sim, comps, mu, box))).astype(np.uint32)
    return counts


def pixel_q_components(sim, theta_deg: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The detector pixels' sample-frame Q (Å⁻¹) at ``theta_deg``: three contiguous arrays."""
    q = sim.pixel_q_sample(float(theta_deg)).reshape(-1, 3)
    return tuple(np.ascontiguousarray(q[:, j]) for j in range(3))


def point_q(sim, y_px: float, x_px: float) -> tuple[np.ndarray, float]:
    """The particle's local Q (3,) and diffracting weight at raster point (y_px, x_px)."""
    f = sim.particle.fields(np.array([float(y_px)]), np.array([float(x_px)]))
    return f["q_sample_A_inv"].reshape(3), float(f["weight"][0])


class SXDMDetector(BeamGateMixin, AreaDetectorGroup):
    """SXDM pixel detector looking at the (003) reflection of one particle."""

    det_name = "sxdm"
    dtype = "uint32"
    scalar_keys = ("sample_x_um", "sample_y_um", "theta_deg", "energy_eV", "counter", "beam_on")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.material, self.state, self.raster = "SC-NM91", "charged", 32
        self._sims: dict[float, object] = {}
        self._q_cache: OrderedDict = OrderedDict()  # (energy, theta) -> pixel Q components
        self._point_cache: OrderedDict = OrderedDict()  # (energy, y_px, x_px) -> (mu, weight)
        self._cache_lock = threading.Lock()  # frames are computed in executor threads
        self._fly_motion = None  # the sample_x motion that triggered the series (External)

    def configure_sample(self, material: str, state: str, raster: int) -> None:
        self.material, self.state, self.raster = material, state, int(raster)
        self._sims.clear()
        with self._cache_lock:
            self._q_cache.clear()
            self._point_cache.clear()

    def simulation(self, energy_eV: float):
        """The forward-model set-up for ``energy_eV`` (cached per energy)."""
        key = round(float(energy_eV), 6)
        sim = self._sims.get(key)
        if sim is None:
            from strainstream.sim.sxdm_frames import particle_preset, simulate_sxdm

            pt = particle_preset(self.material, self.state, ny=self.raster, nx=self.raster)
            sim = simulate_sxdm(pt, energy_keV=key / 1000.0, shape=self.frame_shape,
                                drift_step_nm=0.0, noise=False, n_theta=3)
            if len(self._sims) > 8:
                self._sims.clear()
            self._sims[key] = sim
        return sim

    def _cached(self, cache: OrderedDict, key: tuple, size: int, compute):
        with self._cache_lock:
            value = cache.get(key)
            if value is not None:
                cache.move_to_end(key)
                return value
        value = compute()
        with self._cache_lock:
            cache[key] = value
            while len(cache) > size:
                cache.popitem(last=False)
        return value

    def arm_trigger(self) -> asyncio.Future:
        """The trigger input is wired to the endstation controller's motion output of
        ``sample_x``: the pulse comes when its next motion starts (a fly line)."""
        out = asyncio.get_running_loop().create_future()
        motion = self.parent.sample_x.next_motion()

        def started(fut):
            if fut.cancelled() or out.done():
                return
            self._fly_motion = fut.result()
            out.set_result(self._fly_motion.start_time)

        motion.add_done_callback(started)
        out.add_done_callback(lambda f: motion.cancel() if f.cancelled() else None)
        return out

    def make_frame(self, index, t=None):
        es = self.parent
        motion = self._fly_motion if t is not None else None
        x = motion.position(t) if motion is not None else es.sample_x.position
        y, th, e = es.sample_y.position, es.theta.position, es.energy.position
        sim = self.simulation(e)
        step = sim.particle.step_nm
        noise, seed = bool(self.Noise.value), [int(self.Seed.value), int(index)]
        beam_on = self.beam_on()
        scalars = {"sample_x_um": x, "sample_y_um": y, "theta_deg": th, "energy_eV": e,
                   "counter": float(index), "beam_on": float(beam_on)}
        if not beam_on:  # no photons: zeros (a photon counter has no dark current)
            shape = self.frame_shape
            return (lambda: np.zeros(shape, np.uint32)), scalars
        y_px, x_px = y * 1000.0 / step, x * 1000.0 / step
        ekey = round(float(e), 6)

        def compute():
            q = self._cached(self._q_cache, (ekey, float(th)), 8,
                             lambda: pixel_q_components(sim, th))
            point = self._cached(self._point_cache, (ekey, y_px, x_px), 65536,
                                 lambda: point_q(sim, y_px, x_px))
            if noise:  # the same statistics as rng.poisson(expected), ~7x faster
                return sxdm_point_counts(sim, y_px, x_px, th, np.random.default_rng(seed), q=q, point=point)
            return np.rint(sxdm_point_expected(sim, y_px, x_px, th, q=q, point=point)).astype(np.uint32)

        return compute, scalars


class TXMCamera(BeamGateMixin, AreaDetectorGroup):
    """Full-field TXM camera behind the zone plate."""

    det_name = "txm"
    dtype = "float32"
    scalar_keys = ("energy_eV", "zp_z_mm", "sample_in", "counter", "beam_on")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sample = None

    def configure(self, frame_shape, write_dir):
        super().configure(frame_shape, write_dir)
        from strainstream.sim.txm_images import particle_sample

        self.sample = particle_sample(self.frame_shape)

    def make_frame(self, index, t=None):
        from strainstream.sim.txm_images import simulate_txm_scan

        es = self.parent
        e, zp = es.energy.position, es.zp_z.position
        sample_in = abs(es.sample_inout.position) < 0.5
        noise, seed, rng_seed = bool(self.Noise.value), int(self.Seed.value), [int(self.Seed.value), int(index)]
        sample = self.sample
        beam_on = self.beam_on()
        scalars = {"energy_eV": e, "zp_z_mm": zp, "sample_in": float(sample_in),
                   "counter": float(index), "beam_on": float(beam_on)}

        def compute():
            # the beam structure of the flat depends on the model's seed: keep it fixed (Seed)
            # so flats and sample images match; draw the counting noise per frame here
            scan = simulate_txm_scan(np.array([e]), sample=sample, zp_follows_focus=False,
                                     zp_position_m=zp / 1000.0, drift_px_rms=0.0, noise=False,
                                     seed=seed)
            if not beam_on:  # no photons: the camera's dark current only
                img = scan.darks
            else:
                img = scan.stack[0] if sample_in else scan.flats[0]
            if noise:  # (no photons: Poisson(0) = 0, dark + read noise remain)
                rng = np.random.default_rng(rng_seed)
                dark = scan.darks
                img = rng.poisson(np.clip(img - dark, 0, None)) + dark + rng.normal(
                    0.0, READ_NOISE_COUNTS, img.shape)
            return img.astype(np.float32)

        return compute, scalars


class EndstationIOC(PVGroup):
    """Motors (``<prefix>ES:``), SXDM detector (``<prefix>SXDM:``), TXM camera (``<prefix>TXM:``)."""

    sample_x = _motor("sample_x")
    sample_y = _motor("sample_y")
    sample_z = _motor("sample_z")
    theta = _motor("theta")
    zp_z = _motor("zp_z")
    det_z = _motor("det_z")
    sample_inout = _motor("sample_inout")
    energy = _motor("energy")
    sxdm = SubGroup(SXDMDetector, prefix="SXDM:")
    txm = SubGroup(TXMCamera, prefix="TXM:")


def build(prefix: str, *, sxdm_shape=64, txm_shape=128, material="SC-NM91", state="charged",
          raster=32, write_dir=".") -> EndstationIOC:
    """Create the IOC (PV names ``<prefix>ES:*``, ``<prefix>SXDM:*``, ``<prefix>TXM:*``)."""
    ioc = EndstationIOC(prefix=prefix)
    ioc.sxdm.configure((sxdm_shape, sxdm_shape), write_dir)
    ioc.sxdm.configure_sample(material, state, raster)
    ioc.txm.configure((txm_shape, txm_shape), write_dir)
    return ioc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="strainstream-ioc endstation",
                                 description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--sxdm-shape", type=int, default=64, help="SXDM crop rows = cols (<= 256)")
    ap.add_argument("--txm-shape", type=int, default=128, help="TXM image rows = cols")
    ap.add_argument("--sxdm-material", default="SC-NM91", choices=["SC-NM91", "SC-NC91"])
    ap.add_argument("--sxdm-state", default="charged", choices=["pristine", "charged", "cycled"])
    ap.add_argument("--sxdm-raster", type=int, default=32, help="particle raster points per side")
    args = ap.parse_args(argv)
    if not 8 <= args.sxdm_shape <= 256:
        ap.error("--sxdm-shape must be in 8..256 (the pixel array is 256x256)")
    ioc = build(args.prefix, sxdm_shape=args.sxdm_shape, txm_shape=args.txm_shape,
                material=args.sxdm_material, state=args.sxdm_state, raster=args.sxdm_raster,
                write_dir=args.write_dir)
    return serve(ioc, args.port, "endstation", closers=[ioc.sxdm.close, ioc.txm.close],
                 list_pvs=args.list_pvs, exit_with_parent=args.exit_with_parent)


if __name__ == "__main__":
    raise SystemExit(main())
