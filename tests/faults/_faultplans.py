"""Plans shared by the fault tests."""

from __future__ import annotations

import threading

import bluesky.plan_stubs as bps
import bluesky.preprocessors as bpp


def frames_until(det, done: threading.Event, delay_s: float, extra: int, max_n: int = 5000):
    """A frame series (``experiment="frame_series"``) that goes on until ``done`` is set, then
    takes ``extra`` more frames: the run outlasts the faults however slow the machine is."""

    @bpp.stage_decorator([det])
    @bpp.run_decorator(md={"experiment": "frame_series", "detectors": [det.name]})
    def inner():
        after = 0
        for _ in range(max_n):
            yield from bps.trigger_and_read([det])
            if done.is_set():
                after += 1
                if after >= extra:
                    break
            yield from bps.sleep(delay_s)

    return (yield from inner())
