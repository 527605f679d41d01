"""``python -m pbidr.commands``: the ``pbidr`` command (as the console script)."""

import sys

from pbidr.commands.main import main

sys.exit(main())
