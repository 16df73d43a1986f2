"""Data nobody here produced: classic Resource/Datum runs, document exports, beamtime folders.

- :mod:`.exports` reads bluesky document streams exported as msgpack or jsonl (suitcase,
  databroker-pack) into ``(name, doc)`` pairs;
- :mod:`.folder` builds one operando run from a folder of detector images and a
  potentiostat log;
- :mod:`.importer` writes either into the catalog through the live writer path.
"""
