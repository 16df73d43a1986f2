"""ophyd devices for the (simulated) beamline, created by factories (no module-level connections).

========================================  ===================================================
factory                                   device (PVs)
========================================  ===================================================
``cycler.cycler(prefix)``                 battery cycler (``<prefix>CYC:*``, cycler IOC)
``cycler_file.cycler_file(path, ...)``    potentiostat export file followed (no IOC, read only)
``detectors.ioc_detector("xrd", prefix)`` operando XRD area detector: ophyd ``SingleTrigger`` +
                                          ``AreaDetector``, ``<prefix>XRD:cam1:``/``HDF1:``
``detectors.sim_controls("xrd", prefix)`` the simulated IOC's controls (``<prefix>XRD:SIM:``)
``motors.endstation(prefix)``             motors + mono energy: stock ``ophyd.EpicsMotor`` on
                                          the motor records ``<prefix>ES:<m>`` (endstation IOC)
``motors.motor(prefix, name)``            one endstation motor (``EpicsMotor``)
``detectors.ioc_detector("sxdm"|"txm")``  SXDM pixel detector / TXM camera (endstation IOC)
``beam.beam(prefix)``                     ring current + shutter (``<prefix>BEAM:*``)
``detectors.sim_frame_detector(...)``     in-process simulated detector (no IOC)
``testing.mock_beamline(profile)``        a profile's devices with fake signals (tests)
``testing.SimStage``, ``testing.SimBeam`` in-process simulated motors / beam (no IOC)
========================================  ===================================================

Which devices a beamline has, with which records, is its profile
(:mod:`strainstream.beamlines`: ``sim``, the default, uses these factories).

Every factory takes ``mock=True`` for a fake-signal device (unit tests without IOCs) and
``ioc_address`` for error messages: an IOC that does not answer raises
:class:`strainstream.devices._ioc.IOCNotAnswering` ("cycler IOC at 127.0.0.1:5064 (prefix SS:)
not answering: PV SS:CYC:voltage_V timed out"). The IOCs themselves are in
:mod:`strainstream.devices.ioc`; :class:`strainstream.beamline.Beamline` starts them.
"""
