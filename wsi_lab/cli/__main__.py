"""``python -m wsi_lab.cli``: the same as the ``wsi-lab`` command."""

import sys

from wsi_lab.cli import main

sys.exit(main())
