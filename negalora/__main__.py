import sys

from negalora.cli import main

sys.exit(main())
