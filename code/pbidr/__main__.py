"""``python -m pbidr``: the ``pbidr`` command (as the console script)."""

import sys

from pbidr.commands.main import main

sys.exit(main())
