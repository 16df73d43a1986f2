"""caproto IOCs of the simulated beamline."""
