"""Where WSI Lab finds data on disk: one rule, independent of where the package is installed.

Nothing here is relative to the package's own files (``__file__``): an installed wheel lives in
``site-packages``, far from any checkout. Folders come from environment variables, then from the current
directory and its parents (a notebook in ``notebooks/`` finds the project's ``../shared`` as well as the
repository root does), then from the user cache.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir", "shared_slides_dir", "SHARED_SLIDES_SUBDIR"]

#: the project's shared slides, relative to a folder beside the checkout (``../shared/data/slides``)
SHARED_SLIDES_SUBDIR = Path("shared") / "data" / "slides"
#: how many parent folders of the current directory are searched for ``shared/data/slides``
MAX_PARENTS = 4


def cache_dir() -> Path:
    """The user cache of WSI Lab: ``$WSI_LAB_CACHE``, else ``~/.cache/wsi-lab``."""
    return Path(os.environ.get("WSI_LAB_CACHE") or Path.home() / ".cache" / "wsi-lab").expanduser()


def shared_slides_dir(start: str | os.PathLike[str] | None = None) -> Path | None:
    """The project's folder of real slides: ``$WSI_LAB_SHARED_SLIDES`` when set (even if missing, so a
    test run can point away from it), else the first ``shared/data/slides`` folder found in ``start``
    (default: the current directory) or one of its parents; None when there is none."""
    env = os.environ.get("WSI_LAB_SHARED_SLIDES")
    if env:
        folder = Path(env).expanduser()
        return folder if folder.is_dir() else None
    here = Path(start or Path.cwd()).resolve()
    for folder in [here, *here.parents][: MAX_PARENTS + 1]:
        candidate = folder / SHARED_SLIDES_SUBDIR
        if candidate.is_dir():
            return candidate
    return None
