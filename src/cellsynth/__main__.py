"""``python -m cellsynth`` runs the CLI."""

import sys

from cellsynth.cli import main

sys.exit(main())
