"""`python -m prunelens` (and `torchrun -m prunelens`): the command line."""

import sys

from prunelens.cli import main

sys.exit(main())
