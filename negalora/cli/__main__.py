"""``python -m negalora.cli``, as ``negalora``."""

import sys

from negalora.cli import main

sys.exit(main())
