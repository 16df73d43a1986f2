"""ophyd devices for the (simulated) beamline, created by factories."""
