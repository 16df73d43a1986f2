"""Figure test set-up: the synthetic results helpers (``_plot_synth.py``) importable, the Agg
backend (no display)."""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
