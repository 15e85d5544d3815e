"""Patch datasets that are not slides: a folder tree of image files per class (ImageFolder style) or a
CSV of ``path,label[,patient][,split]`` (MHIST-style 224-px patches), giving the sample contract of
:class:`~wsi_lab.data.dataset.TileDataset`: item ``i`` is ``((C, H, W) tensor, class index)``.

Layouts :func:`scan_folder` reads::

    root/<class>/*.png|jpg|jpeg|tif|tiff|bmp               classes only (splits made by the job)
    root/<split>/<class>/*.png ...                          split folders (train, val, test)

:func:`read_patch_csv` accepts the column names ``path`` (or ``image``, ``file``, ``filename``,
``Image Name``), ``label`` (or ``class``, ``Majority Vote Label``), optional ``patient`` (or
``patient_id``) and ``split`` (or ``Partition``); relative paths are taken from ``root`` (default:
the CSV's folder). Both return a *patch table*: ``path, label, patient_id[, split]``, one row per file.
Missing files, empty class folders, unlabelled rows and mixed image sizes are refused with a
:class:`~wsi_lab.errors.DataError` naming the file. No torch here: :class:`wsi_lab.data.patch_dataset.PatchDataset` is the dataset.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pandas as pd

from wsi_lab.errors import DataError, InvalidParameterError

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "scan_folder", "read_patch_csv", "patch_table", "image_size", "SPLIT_NAMES"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SPLIT_NAMES = ("train", "val", "test")
_ALIASES = {
    "path": ("path", "image", "file", "filename", "image name", "image_name"),
    "label": ("label", "class", "majority vote label"),
    "patient_id": ("patient_id", "patient"),
    "split": ("split", "partition"),
}


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_folders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def scan_folder(root: str | os.PathLike) -> pd.DataFrame:
    """The patch table of an ImageFolder-style tree (module docstring): one row per image, ``label`` =
    its class folder's name, ``patient_id`` = the file name without suffix, ``split`` from split folders."""
    base = Path(root)
    if not base.is_dir():
        raise DataError.at(base, "patch folder not found (expected <root>/<class>/*.png)")
    top = _class_folders(base)
    if not top:
        raise DataError.at(base, "no class folders (expected <root>/<class>/*.png or <root>/train/<class>/...)")
    by_split = all(p.name in SPLIT_NAMES for p in top)
    rows: list[tuple[str, str, str, str | None]] = []
    for split_dir in (top if by_split else [base]):
        classes = _class_folders(split_dir)
        if not classes:
            raise DataError.at(split_dir, "no class folders inside this split folder")
        for cdir in classes:
            files = _images_in(cdir)
            if not files:
                raise DataError.at(cdir, f"class folder {cdir.name!r} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                                         "add patches or remove the folder")
            split = split_dir.name if by_split else None
            rows.extend((str(f), cdir.name, f.stem, split) for f in files)
    table = pd.DataFrame(rows, columns=["path", "label", "patient_id", "split"])
    return table if by_split else table.drop(columns=["split"])


def _column(df: pd.DataFrame, key: str) -> str | None:
    lower = {str(c).strip().lower(): c for c in df.columns}
    return next((lower[a] for a in _ALIASES[key] if a in lower), None)


def read_patch_csv(path: str | os.PathLike, root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The patch table of a CSV (module docstring); every listed file must exist."""
    p = Path(path)
    if not p.is_file():
        raise DataError.at(p, "patch CSV not found")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise DataError.at(p, f"not a readable CSV ({exc})") from exc
    cols = {k: _column(df, k) for k in _ALIASES}
    if cols["path"] is None or cols["label"] is None:
        raise DataError.at(p, f"needs a path and a label column (e.g. 'path,label'); it has {list(df.columns)}")
    base = Path(root) if root is not None else p.parent
    files = [Path(v) if Path(v).is_absolute() else base / v for v in df[cols["path"]].astype(str).str.strip()]
    out = pd.DataFrame({"path": [str(f) for f in files], "label": df[cols["label"]].astype(str).str.strip()})
    out["patient_id"] = (df[cols["patient_id"]].astype(str).str.strip() if cols["patient_id"]
                         else [f.stem for f in files])
    if cols["split"]:
        out["split"] = df[cols["split"]].astype(str).str.strip().str.lower()
    return _checked(out, p)


def _checked(table: pd.DataFrame, source: Path) -> pd.DataFrame:
    if len(table) == 0:
        raise DataError.at(source, "lists no patches")
    unlabelled = table.index[table["label"].isin(["", "nan", "None"])].tolist()
    if unlabelled:
        raise DataError.at(source, f"{len(unlabelled)} row(s) without a label (first: row {unlabelled[0] + 1}); "
                                   "label them or drop them")
    missing = [f for f in table["path"] if not Path(f).is_file()]
    if missing:
        raise DataError.at(source, f"{len(missing)} listed patch file(s) are missing, e.g. {missing[:3]}; fix the "
                                   "paths (relative ones are taken from the CSV's folder or root=)")
    return table.reset_index(drop=True)


def patch_table(path: str | os.PathLike, kind: str = "auto", root: str | os.PathLike | None = None) -> pd.DataFrame:
    """The patch table of ``path``: a folder tree (``kind="folder"``) or a CSV (``kind="csv"``); ``auto``
    picks by whether ``path`` is a folder."""
    if kind not in ("auto", "folder", "csv"):
        raise InvalidParameterError(f"patch source kind must be auto, folder or csv, got {kind!r}")
    if kind == "auto":
        kind = "folder" if Path(path).is_dir() else "csv"
    return scan_folder(path) if kind == "folder" else read_patch_csv(path, root)


def image_size(table: pd.DataFrame) -> int:
    """The side of the (square) patches of ``table`` read from the file headers; :class:`DataError` when
    they differ or are not square (pass ``size=`` to :class:`PatchDataset` to resize them instead)."""
    from PIL import Image

    sizes: dict[tuple[int, int], str] = {}
    for f in table["path"]:
        try:
            with Image.open(f) as im:
                sizes.setdefault(im.size, f)
        except OSError as exc:
            raise DataError.at(f, f"not a readable image ({exc})") from exc
        if len(sizes) > 1:
            (a, fa), (b, fb) = list(sizes.items())[:2]
            raise DataError(f"patches of different sizes: {fa} is {a[0]}x{a[1]}, {fb} is {b[0]}x{b[1]}; pass a size "
                            "(data option 'size') to resize them all")
    (w, h), f = next(iter(sizes.items()))
    if w != h:
        raise DataError.at(f, f"patches are {w}x{h}, not square; pass a size to resize them")
    return int(w)
