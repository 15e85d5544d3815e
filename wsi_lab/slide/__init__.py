"""Slides: the :class:`Slide` facade, :func:`open_slide`, backends and :func:`find_slides`."""

from wsi_lab.slide.backend import available_backends, register_backend
from wsi_lab.slide.discovery import find_slides
from wsi_lab.slide.slide import Slide, open_slide, slide_id
from wsi_lab.slide.summary import SlideInfo, describe_slide


def _tifffile():
    from wsi_lab.slide.tifffile_backend import TifffileBackend

    return TifffileBackend


def _openslide():
    from wsi_lab.slide.openslide_backend import OpenSlideBackend

    return OpenSlideBackend


def _cucim():
    from wsi_lab.slide.cucim_backend import CuCIMBackend

    return CuCIMBackend


register_backend("cucim", _cucim)
register_backend("openslide", _openslide)
register_backend("tifffile", _tifffile)

__all__ = ["Slide", "open_slide", "slide_id", "find_slides", "SlideInfo", "describe_slide", "available_backends",
           "register_backend"]
