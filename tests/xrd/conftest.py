"""XRD test set-up.

- Makes the shared synthetic-data helpers (``_xrd_synth.py``) importable.
- Runs the tests with one BLAS thread when threadpoolctl is available: the refinement does
  many small matrix products, and a multithreaded BLAS on a shared 2-core machine spends
  more time spinning than computing (the per-frame cost is measured on one core anyway).
"""

import sys
from pathlib import Path

import pytest

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # optional: only speed is affected
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
