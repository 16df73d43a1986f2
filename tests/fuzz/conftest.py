"""Fuzz test set-up: makes the shared helpers (``_fuzzdocs``, ``_fuzzcheck``) importable."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
