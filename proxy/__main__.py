"""``python -m proxy``: the same as the ``sipfed`` command."""

import sys

from proxy.cli import main

sys.exit(main())
