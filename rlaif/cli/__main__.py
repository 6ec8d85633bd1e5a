"""`python -m rlaif.cli` (torchrun and accelerate launch start verbs this way)."""

import sys

from rlaif.cli import main

sys.exit(main())
