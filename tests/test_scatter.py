"""ScatterPlot (our Canvas-2D scatter anywidget) from the kernel: colour codes, selection both ways, and the
committed bundle matches its TypeScript source. The browser side is in tests/test_explorer_browser.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests._bundles import assert_bundle_matches
from wsi_lab.errors import InvalidParameterError
from wsi_lab.ui.scatter import ScatterPlot, colour_codes


def test_colour_codes_of_categories_numbers_and_missing_values():
    codes, palette, legend = colour_codes(pd.Series(["b", "a", None, "b"]))
    assert codes.tolist() == [1, 0, 255, 1] and len(palette) == 256 and palette[255] == "#bbbbbb"
    assert [e[0] for e in legend["entries"]] == ["a", "b", "(missing)"]
    codes, palette, legend = colour_codes(np.array([0.0, 0.5, 1.0, np.nan]))
    assert codes.tolist() == [0, 127, 254, 255] and legend["kind"] == "continuous" and legend["max"] == 1.0
    with pytest.raises(InvalidParameterError, match="at most 255"):
        colour_codes(pd.Series(np.arange(300).astype(str)))


def test_selection_goes_both_ways_as_uint32_buffers():
    sp = ScatterPlot(np.arange(5), np.arange(5))
    got: list[list[int]] = []
    sp.on_select(lambda pts: got.append(pts.tolist()))
    sp.select([3, 1, 3])
    assert np.frombuffer(sp.selection, np.uint32).tolist() == [1, 3] and got == [[1, 3]]
    sent: list = []
    sp._send = lambda msg, buffers=None: sent.append(msg)  # what would go back to the page
    sp.set_state({"selection": memoryview(np.array([4, 0], np.uint32).tobytes())})  # the page's lasso
    assert sp.selected.tolist() == [4, 0] and got[-1] == [4, 0]
    assert sent == []  # not echoed: the page holds it already (a 32k-point lasso is 128 KB)
    with pytest.raises(InvalidParameterError, match="0..4"):
        sp.select([5])
    with pytest.raises(InvalidParameterError, match="colour values"):
        sp.color([1, 2])
    sp.select(None)
    assert sp.selection == b"" and got[-1] == []
    sp.close()


def test_committed_scatter_bundle_matches_its_source(tmp_path):
    """wsi_lab/static/scatter.js is what `npm run build` makes from widgets/src/scatter.ts."""
    assert_bundle_matches("scatter", tmp_path)
