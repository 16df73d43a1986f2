"""Area detectors whose frames go to HDF5 and are referenced by StreamResource/StreamDatum.

:class:`SimFrameDetector` is an in-process simulated area detector: on every trigger it asks
a frame source for the next image, appends it to the series' HDF5 file and, when read,
emits one StreamDatum per frame (after a StreamResource for the file). The frame data never
travels through Channel Access or inside event documents.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from event_model import StreamRange, compose_stream_resource
from ophyd import Component, Device, Signal
from ophyd.status import Status

from ._hdf5 import DATASET, H5FrameWriter

__all__ = ["FrameSource", "SimFrameDetector", "sim_frame_detector"]

FrameSource = Callable[[int], np.ndarray]
"""Callable returning frame number ``i`` (0-based within the series) as a 2-D array."""


class SimFrameDetector(Device):
    """A simulated area detector writing one SWMR HDF5 file per staged series.

    Parameters
    ----------
    frame_source : callable
        ``frame_source(i) -> ndarray (rows, cols)`` gives the i-th frame of the series.
    frame_shape : (rows, cols)
        Shape of the frames.
    write_dir : path
        Directory where the files are written; it must be readable by the tiled server.
    dtype : str
        Stored dtype.
    """

    frame_count = Component(Signal, value=0, kind="normal")
    file_name = Component(Signal, value="", kind="config")
    exposure_s = Component(Signal, value=0.1, kind="config")

    def __init__(
        self,
        *,
        name: str,
        frame_source: FrameSource,
        frame_shape: tuple[int, int],
        write_dir: str | os.PathLike,
        dtype: str = "float32",
        **kwargs: Any,
    ) -> None:
        super().__init__(name=name, **kwargs)
        self._frame_source = frame_source
        self._frame_shape = tuple(int(n) for n in frame_shape)
        self._write_dir = Path(write_dir)
        self._dtype = np.dtype(dtype)
        self._writer: H5FrameWriter | None = None
        self._bundle = None
        self._pending: list[int] = []
        self._resource_emitted = False

    @property
    def image_key(self) -> str:
        return f"{self.name}_image"

    def stage(self):
        self._writer = H5FrameWriter(
            self._write_dir / f"{self.name}_{uuid.uuid4().hex[:12]}.h5", self._frame_shape, self._dtype
        )
        self._bundle = compose_stream_resource(
            mimetype="application/x-hdf5",
            uri=self._writer.uri,
            data_key=self.image_key,
            parameters={"dataset": DATASET, "chunk_shape": [1, *self._frame_shape], "swmr": True},
        )
        self._resource_emitted = False
        self._pending = []
        self.file_name.put(str(self._writer.path))
        self.frame_count.put(0)
        return super().stage()

    def unstage(self):
        try:
            return super().unstage()
        finally:
            if self._writer is not None:
                self._writer.close()
                self._writer = None

    def trigger(self) -> Status:
        if self._writer is None:
            raise RuntimeError(f"{self.name}: trigger() before stage(); the plan must stage the detector")
        status = Status(obj=self, timeout=None)
        try:
            frame = np.asarray(self._frame_source(self._writer.count))
            index = self._writer.append(frame)
        except Exception as exc:  # reported through the status, so the RunEngine names it
            status.set_exception(exc)
            return status
        self._pending.append(index)
        self.frame_count.put(self._writer.count)
        status.set_finished()
        return status

    def describe(self) -> dict[str, dict]:
        desc = super().describe()
        desc[self.image_key] = {
            "source": f"sim:{self.name}",
            "shape": list(self._frame_shape),
            "dtype": "array",
            "dtype_numpy": self._dtype.str,
            "external": "STREAM:",
        }
        return desc

    def collect_asset_docs(self) -> Iterator[tuple[str, dict]]:
        if self._bundle is None:
            return
        if not self._resource_emitted and self._pending:
            self._resource_emitted = True
            yield "stream_resource", self._bundle.stream_resource_doc
        for index in self._pending:
            yield "stream_datum", self._bundle.compose_stream_datum(
                indices=StreamRange(start=index, stop=index + 1),
                seq_nums=StreamRange(start=0, stop=0),
            )
        self._pending = []


def sim_frame_detector(
    name: str,
    write_dir: str | os.PathLike,
    frame_source: FrameSource | None = None,
    frame_shape: tuple[int, int] = (512, 512),
    seed: int = 0,
) -> SimFrameDetector:
    """Factory: a simulated area detector (default source: noisy powder rings)."""
    if frame_source is None:
        frame_source = powder_ring_source(frame_shape, seed=seed)
    return SimFrameDetector(
        name=name, frame_source=frame_source, frame_shape=frame_shape, write_dir=write_dir
    )


def powder_ring_source(frame_shape: tuple[int, int], seed: int = 0) -> FrameSource:
    """A cheap placeholder frame source: Gaussian rings whose radius drifts with frame number.

    Deterministic for a given seed and frame index (Poisson noise seeded per frame).
    """
    rows, cols = frame_shape
    r = np.hypot(*np.meshgrid(np.arange(rows) - rows / 2, np.arange(cols) - cols / 2, indexing="ij"))
    scale = min(rows, cols) / 2

    def source(i: int) -> np.ndarray:
        rng = np.random.default_rng([seed, i])
        radius = (0.30 + 0.002 * i) * scale
        lam = 50 + 400 * np.exp(-0.5 * ((r - radius) / 2.0) ** 2) + 200 * np.exp(
            -0.5 * ((r - 1.6 * radius) / 2.5) ** 2
        )
        return rng.poisson(lam).astype(np.float32)

    return source
