"""napari layers of a slide as a person should see it: brightfield as one RGB layer; fluorescence as one
layer per channel with its colour map, the slide's own contrast limits and gamma (``wsi_lab.slide.display``)."""

from __future__ import annotations

from typing import Any

__all__ = ["display_layers_data"]

_NAMED = {(255, 0, 0): "red", (0, 255, 0): "green", (0, 0, 255): "blue", (255, 255, 255): "gray",
          (255, 0, 255): "magenta", (0, 255, 255): "cyan", (255, 255, 0): "yellow"}


def _colormap(color: tuple[int, int, int]) -> Any:
    name = _NAMED.get((int(color[0]), int(color[1]), int(color[2])))
    if name is not None:
        return name
    from napari.utils import Colormap

    return Colormap([[0, 0, 0, 1], [c / 255 for c in color] + [1]], name="wsi_lab_" + "".join(f"{c:02x}" for c in color))


def display_layers_data(slide, chunk: int = 1024, display: Any = "auto") -> list[tuple]:
    """napari ``(data, kwargs, "image")`` tuples for ``slide``: the RGB pyramid when the display is raw
    or identity (brightfield), else one additive layer per displayed channel (same data, one channel), named
    after the channel when the file names it (OME), with its colour map, contrast limits and gamma."""
    from wsi_lab.napari._viewer import slide_layer_data
    from wsi_lab.slide.display import resolve_display

    data, kwargs, kind = slide_layer_data(slide, chunk=chunk)
    settings = resolve_display(slide, display)
    if settings is None or settings.identity:
        return [(data, kwargs, kind)]
    from wsi_lab.slide.display import channel_metadata

    names = [m["name"] for m in channel_metadata(slide)]
    out = []
    meta = {**kwargs["metadata"], "display": settings.to_dict()}
    for c, color, limits in zip(settings.channels, settings.colors, settings.limits):
        label = names[c] if c < len(names) else f"ch {c}"
        kw = {**kwargs, "name": f"{kwargs['name']} [{label}]", "rgb": False, "contrast_limits": limits,
              "gamma": settings.gamma, "colormap": _colormap(color), "blending": "additive",
              "metadata": {**meta, "channel": c}}
        out.append(([lvl[..., c] for lvl in data], kw, "image"))
    return out
