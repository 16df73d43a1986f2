"""Fixtures of the deployment tests."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest


@pytest.fixture
def reachable_dir():
    """A fresh directory the ``postgres`` user can reach when we are root.

    pytest's temporary directories are private to root (mode 700), and PostgreSQL refuses to
    run as root, so a cluster must live where the ``postgres`` user may enter.
    """
    root = Path(tempfile.mkdtemp(prefix="strainstream-test-deploy-"))
    os.chmod(root, 0o711)
    yield root
    shutil.rmtree(root, ignore_errors=True)
