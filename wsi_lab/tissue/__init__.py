"""Tissue detection on a low-resolution view of a slide, mapped exactly to level-0 pixels.

:func:`detect_tissue` reads a low-resolution level in horizontal bands (memory stays bounded), resamples
each band so that every mask pixel covers exactly ``downsample`` × ``downsample`` level-0 pixels made of
``k × k`` sub-pixels, and computes per-cell features once (cached per slide): mean saturation, mean
intensity, brightest channel, variance over all channels, and the near-white / near-black sub-pixels.
Methods then only threshold these features, so re-thresholding (a UI slider) takes milliseconds:

* ``od`` (the default, :data:`DEFAULT_METHOD`): optical density of each cell against the slide's own glass
  colour (brightfield: H&E, IHC with a pale counterstain, special stains, frozen sections) or log brightness
  above its background (fluorescence), median-filtered over 3 × 3 cells, cut by Otsu on log density
  (``threshold=`` forces a cut in OD units), then closed (radius 1 cell), specks under 1500 µm² dropped and
  holes under 2000 µm² filled (see :mod:`wsi_lab.tissue.density`);

* ``variance``: per-cell variance of the intensities of all channels > ``threshold`` (the classic method;
  works for brightfield, IHC and fluorescence since background is flat in every modality);
* ``otsu``: Otsu threshold on saturation (brightfield/H&E/IHC; capped at 40 so a slide that is all tissue stays whole;
  on darkness when a brightfield slide has no colour, e.g. a grayscale scan) or on the brightest channel in the log domain
  (fluorescence, dark background); ``threshold=`` forces a value;
* ``background``: a cell is tissue when at most ``max_background`` of it is near-white (brightfield, all
  channels ≥ ``background_threshold``) or near-black (fluorescence, all channels ≤ ``background_threshold``).

Brightfield vs fluorescence is detected from the brightness of the slide's border (``modality="auto"``)
and can be forced. Optional clean-up for every method: ``closing``/``opening`` (radius in mask pixels),
``min_object_um2``/``min_hole_um2`` (µm², needs µm/px) or ``min_object_px``/``min_hole_px`` (level-0 px²).
"""

from __future__ import annotations

from wsi_lab.tissue.detect import GRAY_MAX_SATURATION, OTSU_MAX_SATURATION, detect_tissue, otsu_threshold
from wsi_lab.tissue.features import (
    MAX_MASK_SIDE,
    TARGET_MASK_MPP,
    cell_features,
    clear_feature_cache,
    default_mask_downsample,
)
from wsi_lab.tissue.mask import TissueMask
from wsi_lab.tissue.methods import (
    BACKGROUND_THRESHOLD,
    COMMON,
    DEFAULT_METHOD,
    DEFAULTS,
    METHODS,
    TISSUE_METHODS,
    TissueMethod,
    check_params,
    default_background_threshold,
    threshold_params,
)

__all__ = ["TissueMask", "detect_tissue", "otsu_threshold", "METHODS", "DEFAULT_METHOD", "TISSUE_METHODS", "TissueMethod",
           "threshold_params", "default_background_threshold", "check_params", "default_mask_downsample",
           "cell_features", "clear_feature_cache", "BACKGROUND_THRESHOLD", "DEFAULTS", "COMMON",
           "TARGET_MASK_MPP", "MAX_MASK_SIDE", "GRAY_MAX_SATURATION", "OTSU_MAX_SATURATION"]
