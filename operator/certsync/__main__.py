"""`python -m certsync`: run the operator."""

import sys

from certsync.cli import main

sys.exit(main())
