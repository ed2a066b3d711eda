"""``python -m jobs`` is the ``hirl`` command."""

import sys

from .cli import main

sys.exit(main())
