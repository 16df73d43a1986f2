"""Report test set-up: the report checks (``_report_checks.py``) and the figure tests' synthetic
results (``tests/plots/_plot_synth.py``) importable, the Agg backend (no display)."""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

for _dir in (Path(__file__).resolve().parent, Path(__file__).resolve().parent.parent / "plots"):
    if str(_dir) not in sys.path:
        sys.path.insert(0, str(_dir))
