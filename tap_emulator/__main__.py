"""`python -m tap_emulator` is the `tap-emulator` command."""

import sys

from tap_emulator.cli import main

sys.exit(main())
