"""Run negalora from a checkout: ``python main.py …`` is the same as the ``negalora`` command."""

import sys

from negalora.cli import main

if __name__ == "__main__":
    sys.exit(main())
