"""Training commands: ``train`` and ``features`` (registered by :mod:`wsi_lab.train.cli`)."""

from __future__ import annotations

from wsi_lab.train.cli import register as register

ORDER = 60
