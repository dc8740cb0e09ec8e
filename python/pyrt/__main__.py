"""`python -m pyrt`: the command line, as `pyrt`."""

import sys

from pyrt.cli import main

sys.exit(main())
