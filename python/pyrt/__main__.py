"""`python -m pyrt`: the command line, as `pyrt`."""

import sys

from .cli import main

sys.exit(main())
