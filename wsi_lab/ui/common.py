"""Shared helpers of the notebook widgets: readable error boxes and image-to-widget conversion.

Widgets never show a traceback: :class:`ErrorBox` turns an exception into one readable line (typed
:mod:`wsi_lab.errors` messages already say what is wrong and what to do) and logs the traceback.
Arrays are ``(H, W, C) uint8``.
"""

from __future__ import annotations

import contextlib
import html
import logging
from collections.abc import Iterator

import ipywidgets as widgets
import numpy as np
from PIL import Image

from wsi_lab.errors import WSILabError
from wsi_lab.io import encode_image as _encode

log = logging.getLogger(__name__)

_BOX_STYLE = ("padding:6px 10px;margin:4px 0;border-radius:4px;border:1px solid {border};"
              "background:{bg};color:{fg};font-family:var(--jp-ui-font-family, sans-serif);font-size:13px")
_STYLES = {
    "error": dict(border="#d9534f", bg="#fdecea", fg="#8a1f11"),
    "warning": dict(border="#f0ad4e", bg="#fff6e5", fg="#7a4b00"),
    "info": dict(border="#5bc0de", bg="#eaf6fb", fg="#1b4f63"),
}


def describe_error(exc: BaseException) -> str:
    """One readable line for ``exc``: the message of a typed WSI Lab error (or a ValueError from a bad
    value), else the exception type and message with a pointer to the log."""
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, WSILabError):
        return text
    if isinstance(exc, (ValueError, TypeError, FileNotFoundError, PermissionError)):
        return f"{type(exc).__name__}: {text}"
    return f"Unexpected {type(exc).__name__}: {text} (the full traceback is in the log)"


def message_html(text: str, kind: str = "error") -> str:
    """An HTML box with ``text`` escaped; ``kind`` is ``error``, ``warning`` or ``info``."""
    style = _BOX_STYLE.format(**_STYLES.get(kind, _STYLES["error"]))
    return f'<div class="wsi-lab-{kind}" style="{style}">{html.escape(text)}</div>'


class ErrorBox(widgets.HTML):
    """An HTML widget that shows one message (error, warning or info) or nothing."""

    def show(self, exc_or_text: BaseException | str, kind: str = "error") -> None:
        """Show an exception (as :func:`describe_error`) or a plain message."""
        text = describe_error(exc_or_text) if isinstance(exc_or_text, BaseException) else str(exc_or_text)
        self.value = message_html(text, kind)

    def clear(self) -> None:
        self.value = ""

    @property
    def text(self) -> str:
        """The message shown now, as plain text ("" when none)."""
        import re

        return html.unescape(re.sub(r"<[^>]+>", "", self.value))

    @contextlib.contextmanager
    def guard(self, what: str = "") -> Iterator[None]:
        """Run a block; on an exception show it here (readably) instead of raising. Clears first."""
        self.clear()
        try:
            yield
        except Exception as exc:
            # shown in the widget; the traceback goes to the log at debug level (never to the output area)
            log.info("%s failed: %s", what or "widget action", exc)
            log.debug("%s failed", what or "widget action", exc_info=True)
            prefix = f"{what}: " if what else ""
            self.value = message_html(prefix + describe_error(exc), "error")


def to_uint8_rgb(array: np.ndarray) -> np.ndarray:
    """Coerce a (H, W), (H, W, 1|3|4) array to uint8 (H, W, 3|4), for display only."""
    arr = np.asarray(array)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return arr


def encode_image(array: np.ndarray, fmt: str = "png", quality: int = 85) -> bytes:
    """Encode any image array (H, W[, C]; bool, gray or RGB[A]) as PNG or JPEG bytes for a widget."""
    return _encode(to_uint8_rgb(array), "jpeg" if fmt.lower() in ("jpg", "jpeg") else "png", quality)


def image_widget(array: np.ndarray | None = None, fmt: str = "png", **layout) -> widgets.Image:
    """An ``ipywidgets.Image`` showing ``array`` (or empty), with ``layout`` keywords."""
    w = widgets.Image(format=fmt, layout=widgets.Layout(**layout) if layout else None)
    if array is not None:
        set_image(w, array, fmt)
    return w


def set_image(widget: widgets.Image, array: np.ndarray, fmt: str = "png") -> None:
    """Replace the picture of an ``ipywidgets.Image``."""
    widget.format = "jpeg" if fmt.lower() in ("jpg", "jpeg") else "png"
    widget.value = encode_image(array, fmt)


def composite(base: np.ndarray, rgba: np.ndarray) -> np.ndarray:
    """Alpha-blend an (h, w, 4) uint8 overlay onto an (H, W, 3) uint8 image (the overlay is resized
    to the image with nearest-neighbour when the shapes differ). Display only."""
    base = to_uint8_rgb(base)[:, :, :3]
    over = np.asarray(rgba)
    if over.shape[:2] != base.shape[:2]:
        over = np.asarray(Image.fromarray(over).resize((base.shape[1], base.shape[0]), Image.Resampling.NEAREST))
    alpha = over[:, :, 3:4].astype(np.float32) / 255.0
    out = base.astype(np.float32) * (1 - alpha) + over[:, :, :3].astype(np.float32) * alpha
    return out.astype(np.uint8)
