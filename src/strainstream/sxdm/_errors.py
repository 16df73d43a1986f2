"""Exceptions of the SXDM analysis core (all are ``ValueError`` subclasses)."""

from __future__ import annotations

from strainstream.errors import StrainstreamError


class SXDMError(StrainstreamError, ValueError):
    """Bad SXDM input or a result that cannot be computed; the message says what to do."""


class SXDMMetadataError(SXDMError):
    """Missing or invalid geometry metadata (HDF5 root attributes / run metadata)."""
