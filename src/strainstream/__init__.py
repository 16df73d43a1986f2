"""strainstream: live beamline streaming analysis for operando battery-cathode studies.

The analysis core lives in the subpackages ``xrd``, ``sxdm``, ``xanes``, ``electrochem`` and
``sim`` (numpy/scipy/h5py/pyFAI only). ``plans``, ``callbacks`` and ``devices`` hold the
bluesky/ophyd/tiled glue; they are mapped into this namespace by the packaging.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
