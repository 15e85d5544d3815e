"""Issue 9's round trip: regions (predicted or hand-drawn) written as ASAP XML and QuPath GeoJSON read
back as the same polygons (within a pixel), and rasterise back to the same mask."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from wsi_lab.annotations import (
    AnnotationSet,
    LabelMap,
    Region,
    rasterize,
    read_annotations,
    write_asap,
    write_geojson_annotations,
)

pytest.importorskip("torch")
from wsi_lab.infer.segment import mask_to_annotations


def _mask() -> np.ndarray:
    m = np.zeros((60, 80), np.uint8)
    m[5:40, 5:50] = 1
    m[15:25, 15:30] = 0      # a hole in the tumour
    m[18:22, 18:22] = 2      # an island of another class inside the hole
    m[45:58, 60:78] = 2
    m[50:53, 70:73] = 1      # tumour inside stroma
    m[0, 79] = 1             # a one-pixel region at the corner
    return m


def _same_rings(a: np.ndarray, b: np.ndarray, tol: float = 1.0) -> bool:
    return a.shape == b.shape and float(np.abs(a - b).max()) <= tol


@pytest.fixture
def qupath_schema():
    jsonschema = pytest.importorskip("jsonschema")
    from tests.test_geojson import QUPATH_SCHEMA

    schema = copy.deepcopy(QUPATH_SCHEMA)
    props = schema["properties"]["features"]["items"]["properties"]["properties"]["properties"]
    props["name"] = {"type": "string"}  # QuPath reads an object's name from properties.name
    return lambda data: jsonschema.validate(data, schema)


def test_predicted_regions_round_trip_through_asap_and_geojson(tmp_path, qupath_schema):
    mask, ds, classes = _mask(), 8.0, ["background", "tumor", "stroma"]
    regions = mask_to_annotations(mask, ds, classes)
    assert sorted({r.label for r in regions.regions}) == ["stroma", "tumor"]
    assert any(r.holes for r in regions.regions)
    lm = LabelMap.of({"tumor": "tumor", "stroma": "stroma", "_2": 0}, classes=classes)
    assert np.array_equal(rasterize(regions, lm, size=(80, 60), downsample=ds), mask)

    gj = read_annotations(write_geojson_annotations(tmp_path / "r.geojson", regions))
    qupath_schema(json.loads((tmp_path / "r.geojson").read_text()))
    assert len(gj) == len(regions)
    for a, b in zip(regions.regions, gj.regions):
        assert a.label == b.label and _same_rings(a.exterior, b.exterior) and len(a.holes) == len(b.holes)
        assert all(_same_rings(h, k) for h, k in zip(a.holes, b.holes))
    assert np.array_equal(rasterize(gj, lm, size=(80, 60), downsample=ds), mask)

    xml = read_annotations(write_asap(tmp_path / "r.xml", regions))  # holes bridged into the outline
    assert len(xml) == len(regions) and xml.groups["tumor"]["color"]
    for a, b in zip(regions.regions, xml.regions):
        assert a.label == b.label
        for ring in (a.exterior, *a.holes):  # every vertex of the outline and of each hole is in the ring
            assert np.abs(ring[:, None, :] - b.exterior[None, :, :]).max(-1).min(1).max() <= 1.0
    assert np.array_equal(rasterize(xml, lm, size=(80, 60), downsample=ds), mask)


def test_asap_exclusion_holes_follow_the_camelyon_convention(tmp_path):
    mask = np.zeros((40, 40), np.uint8)
    mask[5:35, 5:35] = 1
    mask[10:20, 10:20] = 0
    regions = mask_to_annotations(mask, 4.0, ["background", "tumor"])
    xml = read_annotations(write_asap(tmp_path / "c.xml", regions, holes="exclude"))
    assert [r.label for r in xml.regions] == ["tumor", "_2"]
    assert np.abs(xml.regions[1].exterior - regions.regions[0].holes[0]).max() <= 1.0
    back = rasterize(xml, {"tumor": "tumor", "_2": 0}, size=(40, 40), downsample=4.0)
    assert np.array_equal(back, mask)


def test_hand_drawn_fractional_polygons_round_trip_within_a_pixel(tmp_path):
    rng = np.random.default_rng(5)
    ang = np.sort(rng.uniform(0, 2 * np.pi, 50))
    pts = np.stack([5000.123456 + 900 * np.cos(ang), 3000.987654 + 700 * np.sin(ang)], 1)
    a = AnnotationSet([Region.of("Tumor", pts, [[(4900.5, 2900.25), (5100.75, 2900.25), (5000.1, 3100.9)]],
                                 name="lesion 1"),
                       Region.of("Tumor", [(10, 10)], name="seed", kind="dot")])
    lm = LabelMap.of({"Tumor": "tumor"})
    want = rasterize(a, lm, size=(1000, 800), origin=(4500, 2600))
    for path in (tmp_path / "a.xml", tmp_path / "a.geojson"):
        (write_asap if path.suffix == ".xml" else write_geojson_annotations)(path, a)
        b = read_annotations(path)
        ring = np.concatenate([b.regions[0].exterior, *b.regions[0].holes])  # XML: one bridged ring
        for orig in (a.regions[0].exterior, a.regions[0].holes[0]):  # every vertex kept (to 1e-3 px)
            assert np.abs(orig[:, None, :] - ring[None, :, :]).max(-1).min(1).max() <= 1e-3
        assert b.regions[0].name == "lesion 1"
        assert np.array_equal(rasterize(b, lm, size=(1000, 800), origin=(4500, 2600)), want)
        dots = [r for r in b.regions if r.kind == "dot"]
        assert len(dots) == 1 and dots[0].exterior.tolist() == [[10.0, 10.0]]
    b = read_annotations(tmp_path / "a.geojson")
    assert _same_rings(b.regions[0].exterior, a.regions[0].exterior, 1e-3)
    assert _same_rings(b.regions[0].holes[0], a.regions[0].holes[0], 1e-3)
