import sys

from negalora.worker.server import main

sys.exit(main())
