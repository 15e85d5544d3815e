"""``python -m wsi_lab.train --spec spec.json``: see :mod:`wsi_lab.train.run`."""

import sys

from wsi_lab.train.run import main

if __name__ == "__main__":
    sys.exit(main())
