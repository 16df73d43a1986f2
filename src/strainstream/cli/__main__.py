"""``python -m strainstream.cli``: the ``strainstream`` command."""

import sys

from strainstream.cli import main

sys.exit(main())
