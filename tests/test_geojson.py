"""GeoJSON for QuPath: a strict schema of what QuPath 0.4+ imports, the round trip, bad files."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

jsonschema = pytest.importorskip("jsonschema")

from wsi_lab.errors import DataError, InvalidParameterError  # noqa: E402
from wsi_lab.infer.geojson import mask_contours, read_geojson, write_geojson  # noqa: E402

_POINT = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2}
_RING = {"type": "array", "items": _POINT, "minItems": 4}
QUPATH_SCHEMA = {  # what QuPath 0.4+ reads: a FeatureCollection of Features with its properties
    "type": "object", "required": ["type", "features"], "additionalProperties": False,
    "properties": {"type": {"const": "FeatureCollection"}, "features": {"type": "array", "items": {
        "type": "object", "required": ["type", "geometry", "properties"], "additionalProperties": False,
        "properties": {
            "type": {"const": "Feature"},
            "geometry": {"type": "object", "required": ["type", "coordinates"], "additionalProperties": False,
                         "properties": {"type": {"const": "Polygon"},
                                        "coordinates": {"type": "array", "items": _RING, "minItems": 1}}},
            "properties": {"type": "object", "required": ["objectType"], "additionalProperties": False, "properties": {
                "objectType": {"enum": ["tile", "detection", "annotation"]},
                "classification": {"type": "object", "required": ["name", "color"], "additionalProperties": False,
                                   "properties": {"name": {"type": "string"},
                                                  "color": {"type": "array", "minItems": 3, "maxItems": 3,
                                                            "items": {"type": "integer", "minimum": 0,
                                                                      "maximum": 255}}}},
                "measurements": {"type": "object", "additionalProperties": {"type": "number"}}}}}}}},
}


def _preds() -> pd.DataFrame:
    t = pd.DataFrame({"slide_id": "s", "x": [0, 256, 512], "y": [0, 0, 256], "level": 0, "read_size": 256,
                      "tile_size": 64, "prob_a": [0.9, 0.2, np.nan], "prob_b": [0.1, 0.8, 0.5],
                      "pred": ["a", "b", "b"]})
    return t


def _closed_and_clockwise(ring) -> bool:
    area = sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring[:-1], ring[1:])) / 2
    return ring[0] == ring[-1] and area > 0  # y down: positive shoelace = clockwise on screen


def test_tiles_and_tissue_contours_pass_the_qupath_schema_and_round_trip(tmp_path):
    mask = np.zeros((6, 8), bool)
    mask[1:5, 1:6] = True
    mask[2:4, 2:4] = False  # a hole
    mask[0, 7] = True  # a second island
    path = write_geojson(tmp_path / "tiles.geojson", _preds(), mask=_Mask(mask, 32.0))
    data = json.loads(path.read_text())
    jsonschema.validate(data, QUPATH_SCHEMA)
    tiles = [f for f in data["features"] if f["properties"]["objectType"] == "tile"]
    assert tiles[1]["geometry"]["coordinates"] == [[[256, 0], [512, 0], [512, 256], [256, 256], [256, 0]]]
    assert tiles[0]["properties"]["classification"]["name"] == "a"
    assert "prob_a" not in tiles[2]["properties"]["measurements"]  # NaN is left out, not written as NaN
    annotations = [f for f in data["features"] if f["properties"]["objectType"] == "annotation"]
    assert len(annotations) == 2
    outer = annotations[0]["geometry"]["coordinates"]
    assert len(outer) == 2 and _closed_and_clockwise(outer[0]) and not _closed_and_clockwise(outer[1])
    assert outer[0][0] == [32.0, 32.0] and max(p[0] for p in outer[0]) == 6 * 32.0
    back = read_geojson(path)
    bt = back[back.object_type == "tile"].reset_index(drop=True)
    assert bt[["x", "y", "width", "height"]].to_numpy().tolist() == [[0, 0, 256, 256], [256, 0, 256, 256],
                                                                    [512, 256, 256, 256]]
    assert bt["classification"].tolist() == ["a", "b", "b"] and bt["prob_b"].tolist() == [0.1, 0.8, 0.5]


class _Mask:
    def __init__(self, mask, downsample):
        self.mask, self.downsample = mask, downsample


def test_contour_areas_equal_the_mask_area():
    rng = np.random.default_rng(0)
    mask = rng.random((20, 30)) > 0.5
    polys = mask_contours(mask, 1.0)

    def area(ring):
        return abs(sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(ring[:-1], ring[1:])) / 2)

    total = sum(area(pl[0]) - sum(area(h) for h in pl[1:]) for pl in polys)
    assert total == mask.sum()


def test_bad_files_and_columns_are_refused_by_name(tmp_path):
    bad = tmp_path / "one.geojson"
    bad.write_text(json.dumps({"type": "Feature", "geometry": None, "properties": {}}))
    with pytest.raises(DataError, match=r"one\.geojson.*FeatureCollection.*'Feature'"):
        read_geojson(bad)
    (tmp_path / "junk.geojson").write_text("{not json")
    with pytest.raises(DataError, match="junk.geojson"):
        read_geojson(tmp_path / "junk.geojson")
    with pytest.raises(InvalidParameterError, match="'label'"):
        write_geojson(tmp_path / "x.geojson", _preds(), column="label")
    assert not (tmp_path / "x.geojson").exists()


def _regions():
    from wsi_lab.annotations import AnnotationSet, Region

    ang = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    outline = np.stack([1200.37 + 300 * np.cos(ang), 800.61 + 200 * np.sin(ang)], 1)
    hole = [(1150.25, 780.5), (1250.75, 780.5), (1200.1, 850.9)]
    return AnnotationSet([Region.of("Tumor", outline, [hole], name="lesion 1"),
                          Region.of("Stroma", [(10.5, 20.25), (400.75, 20.25), (400.75, 300.5), (10.5, 300.5)],
                                    name="band"),
                          Region.of("Tumor", [(50.5, 60.5)], name="seed", kind="dot")])


@pytest.mark.parametrize("suffix", [".xml", ".geojson"])
def test_asap_and_geojson_annotations_round_trip_through_the_tile_writer(tmp_path, suffix):
    """Regions read from ASAP XML or QuPath GeoJSON, written with the tiles by the one QuPath writer, read
    back as the same regions (every vertex within a pixel); the file passes QuPath's schema."""
    import copy

    from wsi_lab.annotations import read_annotations, read_geojson_annotations, write_asap, write_geojson_annotations

    src = tmp_path / f"drawn{suffix}"
    (write_asap if suffix == ".xml" else write_geojson_annotations)(src, _regions())
    drawn = read_annotations(src)
    path = write_geojson(tmp_path / "all.geojson", _preds(), annotations=drawn)
    data = json.loads(path.read_text())
    schema = copy.deepcopy(QUPATH_SCHEMA)
    schema["properties"]["features"]["items"]["properties"]["properties"]["properties"]["name"] = {"type": "string"}
    jsonschema.validate({**data, "features": [f for f in data["features"] if f["geometry"]["type"] == "Polygon"]},
                        schema)
    back = read_geojson_annotations(path, object_types=("annotation",))
    assert [(r.label, r.name, r.kind) for r in back.regions] == [(r.label, r.name, r.kind) for r in drawn.regions]
    for a, b in zip(drawn.regions, back.regions):
        assert a.exterior.shape == b.exterior.shape and np.abs(a.exterior - b.exterior).max() <= 1.0
        assert len(a.holes) == len(b.holes) and all(np.abs(h - k).max() <= 1.0 for h, k in zip(a.holes, b.holes))
        assert back.groups[b.label]["color"] == (drawn.groups[a.label]["color"] or "").lower() or not drawn.groups[a.label]["color"]
    rows = read_geojson(path)
    assert rows["object_type"].tolist() == ["tile"] * 3 + ["annotation"] * len(drawn)
    # the tiles are still all there, and a reader of annotations only skips them
    assert len(read_geojson_annotations(path)) == 3 + len(drawn)


def test_one_qupath_feature_rule_for_tiles_and_regions():
    from wsi_lab.annotations import annotations_to_geojson
    from wsi_lab.annotations.geojson import qupath_feature
    from wsi_lab.infer.geojson import tiles_to_geojson

    tile = tiles_to_geojson(_preds(), colors={"a": "#102030"})["features"][0]
    assert tile == qupath_feature(tile["geometry"], "tile", "a", [16, 32, 48], {"prob_a": 0.9, "prob_b": 0.1})
    region = annotations_to_geojson(_regions(), colors={"Tumor": "#102030"})["features"][0]
    assert region == qupath_feature(region["geometry"], "annotation", "Tumor", "#102030", name="lesion 1")
    with pytest.raises(InvalidParameterError, match="needs a colour"):
        qupath_feature(tile["geometry"], "tile", "a")
    with pytest.raises(InvalidParameterError, match="objectType"):
        qupath_feature(tile["geometry"], "cell")
