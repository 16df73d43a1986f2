"""bluesky-queueserver startup code: the strainstream beamline profile, nothing else.

RE Manager executes this file in its worker process; the plans and devices it finds among
the globals are the ones it offers (``RE`` is the RunEngine it runs them with). Everything
is defined once in :func:`strainstream.profile.build_namespace` — the same objects
``strainstream console`` gives an IPython user. Configuration comes from the environment
that ``strainstream queue up`` sets for RE Manager: STRAINSTREAM_URI, STRAINSTREAM_API_KEY,
STRAINSTREAM_PREFIX, STRAINSTREAM_DETECTOR_DIR and the EPICS_CA_* variables.
"""

from strainstream.profile import build_namespace, connect_devices

_ns = build_namespace()
_missing = connect_devices(_ns, timeout_s=10.0)
if _missing:
    print(f"strainstream profile: not connected yet (IOC down?): {', '.join(_missing)}")
globals().update(_ns)
