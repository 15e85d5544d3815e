"""Annotations: ASAP / CAMELYON XML and QuPath GeoJSON readers, label maps, the rasteriser, per-tile
class shares, the balanced sampler, and typed errors for bad files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from wsi_lab.annotations import (
    CAMELYON16,
    AnnotationSet,
    BalancedTileSampler,
    LabelMap,
    Region,
    balanced_indices,
    parse_asap,
    parse_geojson_annotations,
    rasterize,
    read_annotations,
    tile_class_fractions,
)
from wsi_lab.errors import DataError, InvalidParameterError

CAMELYON_XML = """<?xml version="1.0"?>
<ASAP_Annotations>
  <Annotations>
    <Annotation Name="Annotation 0" Type="Polygon" PartOfGroup="_0" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="1" X="300" Y="100"/>
        <Coordinate Order="0" X="100" Y="100"/>
        <Coordinate Order="2" X="300" Y="300"/>
        <Coordinate Order="3" X="100,0" Y="3.0e2"/>
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 1" Type="Rectangle" PartOfGroup="_1" Color="#F4FA58">
      <Coordinates>
        <Coordinate Order="0" X="400" Y="400"/><Coordinate Order="1" X="480" Y="400"/>
        <Coordinate Order="2" X="480" Y="480"/><Coordinate Order="3" X="400" Y="480"/>
      </Coordinates>
    </Annotation>
    <Annotation Name="Annotation 2" Type="Polygon" PartOfGroup="_2" Color="#64FE2E">
      <Coordinates>
        <Coordinate Order="0" X="150" Y="150"/><Coordinate Order="1" X="250" Y="150"/>
        <Coordinate Order="2" X="250" Y="250"/><Coordinate Order="3" X="150" Y="250"/>
      </Coordinates>
    </Annotation>
    <Annotation Name="Dot 0" Type="Dot" PartOfGroup="_0" Color="#F4FA58">
      <Coordinates><Coordinate Order="0" X="10" Y="10"/></Coordinates>
    </Annotation>
  </Annotations>
  <AnnotationGroups>
    <Group Name="_0" PartOfGroup="None" Color="#FF0000"><Attributes/></Group>
    <Group Name="_1" PartOfGroup="None" Color="#FF0000"><Attributes/></Group>
    <Group Name="_2" PartOfGroup="None" Color="#00FF00"><Attributes/></Group>
  </AnnotationGroups>
</ASAP_Annotations>
"""


def _qupath(features) -> dict:
    return {"type": "FeatureCollection", "features": features}


def _poly(rings, name=None, cls="Tumor", gtype="Polygon") -> dict:
    props = {"objectType": "annotation"}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [200, 0, 0]}
    if name:
        props["name"] = name
    return {"type": "Feature", "geometry": {"type": gtype, "coordinates": rings}, "properties": props}


def test_camelyon_xml_reads_groups_order_and_decimal_commas(tmp_path):
    p = tmp_path / "tumor_001.xml"
    p.write_text(CAMELYON_XML)
    a = read_annotations(p)
    assert [r.label for r in a.regions] == ["_0", "_1", "_2", "_0"]
    assert [r.kind for r in a.regions] == ["polygon", "rectangle", "polygon", "dot"]
    assert a.regions[0].exterior.tolist() == [[100, 100], [300, 100], [300, 300], [100, 300]]  # by Order
    assert a.groups["_2"]["color"] == "#00FF00" and a.source == p
    assert LabelMap.of(None, a.labels) is CAMELYON16
    mask = rasterize(a, None, size=(50, 50), downsample=10)  # CAMELYON16: _0/_1 tumour, _2 excluded
    assert mask[12, 12] == 1 and mask[20, 20] == 0 and mask[44, 44] == 1 and mask[1, 1] == 0  # dot: no area
    assert int(mask.sum()) == 20 * 20 - 10 * 10 + 8 * 8


def test_asap_nested_groups_resolve_through_the_parent():
    xml = CAMELYON_XML.replace('<Group Name="_1" PartOfGroup="None"', '<Group Name="_1" PartOfGroup="metastases"')
    a = parse_asap(xml)
    lm = LabelMap.of({"metastases": "tumor", "_0": "tumor", "_2": 0})
    assert lm.index_of(a, a.regions[1]) == 1  # _1 is not mapped itself; its parent is


def test_geojson_polygons_multipolygons_holes_and_classifications():
    ring = [[0, 0], [100, 0], [100, 100], [0, 100], [0, 0]]
    hole = [[25, 25], [75, 25], [75, 75], [25, 75], [25, 25]]
    data = _qupath([_poly([ring, hole], name="big"),
                    _poly([[[[200, 0], [240, 0], [240, 40], [200, 0]]], [[[300, 0], [340, 0], [340, 40], [300, 40]]]],
                          cls="Stroma", gtype="MultiPolygon"),
                    {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [ring]},
                     "properties": {"classification": "Necrosis"}},  # older QuPath: a plain string
                    _poly([ring], cls=None)])
    a = parse_geojson_annotations(data)
    assert [r.label for r in a.regions] == ["Tumor", "Stroma", "Stroma", "Necrosis", "Unclassified"]
    assert len(a.regions[0].holes) == 1 and len(a.regions[0].exterior) == 4  # closing point dropped
    assert a.regions[0].area() == 100 * 100 - 50 * 50
    assert a.groups["Tumor"]["color"] == "#c80000"
    single = parse_geojson_annotations(_poly([ring, hole]))  # one Feature
    as_list = parse_geojson_annotations([_poly([ring, hole])])  # a bare list (older exports)
    assert len(single) == len(as_list) == 1
    mask = rasterize(single, {"Tumor": "tumor"}, size=(100, 100))
    assert mask.sum() == 100 * 100 - 50 * 50 and mask[50, 50] == 0 and mask[10, 10] == 1


def test_rasterize_is_sub_pixel_exact_and_consistent_across_downsamples():
    rng = np.random.default_rng(3)
    ang = np.sort(rng.uniform(0, 2 * np.pi, 40))
    rad = rng.uniform(150, 300, 40)
    pts = np.stack([1000 + rad * np.cos(ang), 700 + rad * np.sin(ang)], 1)
    a = AnnotationSet([Region.of("t", pts)])
    area = a.regions[0].area()
    for ds in (1.0, 4.0, 16.0):
        m = rasterize(a, {"t": "t"}, dimensions=(2000, 1500), downsample=ds)
        assert m.shape == (int(np.ceil(1500 / ds)), int(np.ceil(2000 / ds)))
        assert abs(m.sum() * ds * ds - area) / area < 0.04 * ds / 4 + 0.003
    box = rasterize(a, {"t": "t"}, size=(64, 64), downsample=2.0, origin=(900, 600))  # a tile's box
    whole = rasterize(a, {"t": "t"}, size=(1000, 750), downsample=2.0)
    assert np.array_equal(box, whole[300:364, 450:514])


def test_rasterize_paints_exclusions_last_and_refuses_bad_input(tmp_path):
    ex = Region.of("_2", [(0, 0), (50, 0), (50, 50), (0, 50)], name="ex")
    t = Region.of("_0", [(0, 0), (100, 0), (100, 100), (0, 100)], name="t")
    m = rasterize(AnnotationSet([ex, t]), None, size=(100, 100))  # exclusion first in the file: still wins
    assert m[10, 10] == 0 and m[80, 80] == 1
    p = tmp_path / "s.xml"
    p.write_text(CAMELYON_XML.replace('PartOfGroup="_1"', 'PartOfGroup="lymphocytes"'))
    a = read_annotations(p)
    with pytest.raises(DataError, match=r"s\.xml.*'Annotation 1'.*'lymphocytes'") as exc:
        rasterize(a, {"_0": "tumor", "_2": 0}, size=(10, 10), downsample=50)
    assert exc.value.args
    ok = rasterize(a, LabelMap.of({"_0": "tumor", "_2": 0}, unknown="ignore"), size=(50, 50), downsample=10)
    assert ok[44, 44] == 0 and ok[12, 12] == 1
    named = rasterize(a, {"_0": "tumor", "_2": 0, "lymphocytes": None}, size=(50, 50), downsample=10)
    assert np.array_equal(named, ok)
    with pytest.raises(DataError, match=r"s\.xml.*'Annotation 0'.*outside the 200x200 slide"):
        rasterize(a, None, dimensions=(200, 200), downsample=10)
    with pytest.raises(InvalidParameterError, match="label map"):
        LabelMap.of("_0=1")
    assert LabelMap.of("_0:1 _1:1 _2:0", classes=["background", "tumor"]).mapping == {"_0": 1, "_1": 1, "_2": 0}


@pytest.mark.parametrize("text,match", [
    ("<ASAP_Annotations><Annotations>", "not well-formed XML"),
    ("<Annotations/>", "not ASAP XML"),
    ('<ASAP_Annotations><Annotations><Annotation Name="A 7" Type="Polygon" PartOfGroup="_0"><Coordinates>'
     '<Coordinate Order="0" X="1e" Y="2"/></Coordinates></Annotation></Annotations></ASAP_Annotations>',
     r"'A 7'.*'1e' is not a number"),
    ('<ASAP_Annotations><Annotations><Annotation Name="A 8" Type="Polygon" PartOfGroup="_0"/></Annotations>'
     '</ASAP_Annotations>', r"'A 8'.*no <Coordinates>"),
    ('<ASAP_Annotations><Annotations><Annotation Name="A 9" Type="Blob"><Coordinates/></Annotation></Annotations>'
     '</ASAP_Annotations>', r"'A 9'.*unknown Type 'Blob'"),
])
def test_malformed_xml_names_the_file_and_element(tmp_path, text, match):
    p = tmp_path / "bad.xml"
    p.write_text(text)
    with pytest.raises(DataError, match=match) as exc:
        read_annotations(p)
    assert exc.value.file == p and str(exc.value).startswith(str(p))


@pytest.mark.parametrize("data,match", [
    ("{not json", "not readable JSON"),
    (json.dumps({"type": "Topology"}), "not GeoJSON annotations"),
    (json.dumps(_qupath([_poly([[0, 0], [1, 1]], name="line", gtype="LineString")])), r"'line'.*LineString"),
    (json.dumps(_qupath([_poly([[["a", 0], [1, 1], [0, 1]]], name="txt")])), r"'txt'.*not numbers"),
    (json.dumps(_qupath([_poly([[[0, 0], [1, float("nan")], [0, 1]]], name="nan")])), r"'nan'.*NaN"),
    (json.dumps(_qupath([{"type": "Feature", "properties": {}}])), "feature 0: no geometry"),
])
def test_malformed_geojson_names_the_file_and_feature(tmp_path, data, match):
    p = tmp_path / "bad.geojson"
    p.write_text(data)
    with pytest.raises(DataError, match=match) as exc:
        read_annotations(p)
    assert exc.value.file == p
    with pytest.raises(DataError, match="no such annotation file"):
        read_annotations(tmp_path / "missing.xml")


def test_tile_class_fractions_match_exact_per_tile_rasters():
    rng = np.random.default_rng(0)
    ang = np.sort(rng.uniform(0, 2 * np.pi, 30))
    pts = np.stack([3000 + 1500 * np.cos(ang), 2000 + 1200 * np.sin(ang)], 1)
    hole = [(2800, 1800), (3200, 1800), (3200, 2200), (2800, 2200)]
    a = AnnotationSet([Region.of("tumor", pts, [hole]), Region.of("stroma", [(100, 100), (900, 100), (900, 900)])])
    xs, ys = np.meshgrid(np.arange(0, 6000, 512), np.arange(0, 4000, 512))
    table = pd.DataFrame({"slide_id": "s", "x": xs.ravel(), "y": ys.ravel(), "level": 0, "read_size": 512,
                          "tile_size": 64})
    out = tile_class_fractions(table, {"s": a}, {"tumor": "tumor", "stroma": "stroma"}, positive=["tumor"])
    assert {"frac_tumor", "frac_stroma", "tumor_ratio"} <= set(out.columns) and len(out) == len(table)
    exact = np.array([(rasterize(a, {"tumor": "tumor", "stroma": "stroma"}, size=(512, 512), origin=(x, y)) == 1).mean()
                      for x, y in zip(table["x"], table["y"])])
    assert np.abs(out["frac_tumor"].to_numpy() - exact).max() < 0.08
    assert np.array_equal(out["tumor_ratio"].to_numpy(), out["frac_tumor"].to_numpy())
    assert (exact > 0.99).any() and (exact == 0).any() and ((exact > 0.05) & (exact < 0.95)).any()
    assert out.loc[(out["x"] == 0) & (out["y"] == 0), "frac_stroma"].iloc[0] > 0.3
    none = tile_class_fractions(table, {"s": None}, {"tumor": "tumor"})
    assert (none["tumor_ratio"] == 0).all()


def test_balanced_sampler_fixes_the_positive_share_per_batch_reproducibly():
    ratios = np.r_[np.full(10, 0.8), np.zeros(90)]
    idx = balanced_indices(ratios, positive_fraction=0.25, threshold=0.1, n=64, batch_size=16, seed=1, epoch=3)
    per_batch = (ratios[idx].reshape(4, 16) > 0.1).sum(1)
    assert per_batch.tolist() == [4, 4, 4, 4]
    assert np.array_equal(idx, balanced_indices(ratios, 0.25, 0.1, 64, 16, seed=1, epoch=3))
    assert not np.array_equal(idx, balanced_indices(ratios, 0.25, 0.1, 64, 16, seed=1, epoch=4))
    s = BalancedTileSampler(ratios, 0.5, 0.1, batch_size=8)
    first = list(s)
    s.set_epoch(1)
    assert len(first) == len(s) == 100 and list(s) != first and (ratios[first] > 0.1).mean() == 0.5
    hard = np.zeros(100)
    hard[50] = 1.0  # hard-negative weights: every negative drawn is row 50
    drawn = balanced_indices(ratios, 0.5, 0.1, n=20, hard_negatives=hard)
    assert sorted(set(drawn[ratios[drawn] == 0].tolist())) == [50]
    assert LabelMap.of(None, ["Background", "Tumor"]).mapping == {"Background": 0, "Tumor": 1}
    with pytest.raises(DataError, match="no positive tile"):
        balanced_indices(np.zeros(5), 0.5)
    with pytest.raises(InvalidParameterError, match="positive_fraction"):
        balanced_indices(ratios, 1.5)
