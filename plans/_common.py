"""What every strainstream plan shares: beam suspenders and run metadata."""

from __future__ import annotations

from typing import Any

from bluesky.suspenders import SuspendFloor, SuspendWhenChanged

import strainstream

__all__ = ["base_metadata", "beam_suspenders"]


def beam_suspenders(beam: Any, *, min_ring_current_mA: float = 50.0,
                    resume_ring_current_mA: float | None = None, sleep_s: float = 1.0) -> list:
    """Suspenders that pause a plan while the beam is not usable.

    - storage-ring current below ``min_ring_current_mA`` (resume above
      ``resume_ring_current_mA``, default 1.5× the floor, then wait ``sleep_s``);
    - photon shutter not ``Open``.

    Parameters
    ----------
    beam : Beam device
        Has ``ring_current_mA`` and ``shutter.status`` (see :mod:`strainstream.devices.beam`).
    """
    resume = resume_ring_current_mA if resume_ring_current_mA is not None else 1.5 * min_ring_current_mA
    return [
        SuspendFloor(beam.ring_current_mA, min_ring_current_mA, resume_thresh=resume, sleep=sleep_s,
                     tripped_message=f"storage-ring current below {min_ring_current_mA} mA"),
        SuspendWhenChanged(beam.shutter.status, expected_value="Open", allow_resume=True,
                           sleep=sleep_s, tripped_message="photon shutter closed"),
    ]


def base_metadata(experiment: str, md: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """Start-document metadata common to all strainstream runs.

    ``experiment`` routes the run to its analyses (see strainstream.callbacks.router);
    ``strainstream_version`` records the software; ``fields`` and ``md`` are added (``md``
    wins, so a user can override anything but the experiment).
    """
    out: dict[str, Any] = {"strainstream_version": strainstream.__version__, **fields}
    out.update(md or {})
    out["experiment"] = experiment
    return out
