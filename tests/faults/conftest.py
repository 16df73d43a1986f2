"""Fault-test set-up: a session factory that closes what it made, and the plans the fault
tests share (``_faultplans``, importable from the test modules)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def new_session():
    """make_session, and every session made is closed (writer thread stopped) at the end."""
    from strainstream.session import make_session

    made = []

    def make(*args, **kwargs):
        made.append(make_session(*args, **kwargs))
        return made[-1]

    yield make
    for s in made:
        s.close(timeout_s=0)
