"""Simulated beamline forward models (pure numpy/pyFAI): coin cell, XRD frames, SXDM frames, TXM images.

Import the submodules directly, e.g. ``from strainstream.sim import cell``.
"""
