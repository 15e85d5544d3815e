#!/usr/bin/env bash
# Install the peer tools the benchmarks compare against into a separate venv (/tmp/peer-venv), so their
# old pins never touch the project's .venv. histolab 0.7.0 pins numpy<=1.24 / scikit-image<0.19.4, which
# have no wheels for Python 3.11, so it is installed without its pins on top of current releases (its
# tiler runs unchanged on them).
set -euo pipefail
PEER=${PEER_VENV:-/tmp/peer-venv}
[ -x "$PEER/bin/python" ] || python3 -m venv "$PEER"
"$PEER/bin/pip" install -q --disable-pip-version-check --no-deps histolab==0.7.0
"$PEER/bin/pip" install -q --disable-pip-version-check numpy scipy scikit-image pillow certifi \
  openslide-python openslide-bin tifffile imagecodecs psutil
"$PEER/bin/python" -c "import histolab, openslide; print('peer venv ready:', '$PEER', 'histolab', histolab.__version__)"
