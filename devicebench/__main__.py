"""``python -m devicebench``: the ``devicebench`` command, for a Python whose scripts are not on the PATH."""

import sys

from devicebench.cli import main

sys.exit(main())
