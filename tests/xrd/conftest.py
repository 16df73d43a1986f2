"""Make the shared synthetic-data helpers (_xrd_synth.py) importable by the XRD tests."""

import sys
from pathlib import Path

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
