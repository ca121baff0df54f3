"""Product sidecars: parsing, defaults and the errors users see."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rtsflow.products import ProductError, read_product, write_sidecar


def _sidecar(tmp_path, **doc):
    (tmp_path / "dem.tif").write_bytes(b"")
    doc.setdefault("id", "p1")
    doc.setdefault("acquired", "2011-01-05T10:00:00Z")
    doc.setdefault("dem", "dem.tif")
    path = tmp_path / "p.json"
    path.write_text(json.dumps(doc))
    return path


def test_insar_product_parses(tmp_path):
    (tmp_path / "coh.tif").write_bytes(b"")
    p = read_product(_sidecar(tmp_path, coherence="coh.tif", hoa_m=35, orbit="descending", sensor="TanDEM-X"))
    assert p.kind == "insar" and p.hoa == 35.0 and p.orbit == "descending"
    assert p.acquired == np.datetime64("2011-01-05T10:00:00")
    assert p.rasters["coherence"] == (tmp_path / "coh.tif").resolve()


def test_dem_only_product_has_no_hoa(tmp_path):
    p = read_product(_sidecar(tmp_path, sigma="dem.tif"))
    assert p.kind == "dem" and math.isnan(p.hoa) and p.orbit == "unknown"
    with pytest.raises(ProductError, match="field 'hoa_m': a DEM-only product"):
        read_product(_sidecar(tmp_path, hoa_m=30))


@pytest.mark.parametrize(
    ("doc", "pattern"),
    [
        ({"acquired": "2011-01-05T10:00:00+02:00"}, "field 'acquired': expected UTC"),
        ({"acquired": "yesterday"}, "field 'acquired': expected an ISO 8601"),
        ({"id": ""}, "field 'id': expected a non-empty string"),
        ({"dem": None}, "field 'dem': missing"),
        ({"orbit": "sideways"}, "field 'orbit': expected one of"),
        ({"hoa": 30}, "field 'hoa': unknown key"),
        ({"coherence": "dem.tif", "hoa_m": "40"}, "field 'hoa_m': expected a positive number"),
        ({"coherence": "dem.tif", "hoa_m": float("inf")}, "field 'hoa_m': expected a positive number"),
        ({"layover_shadow": "dem.tif"}, "field 'layover_shadow': only InSAR products"),
        ({"kind": "insar"}, "field 'kind': says 'insar' but the rasters make it a 'dem' product"),
    ],
)
def test_bad_sidecars_name_the_field(tmp_path, doc, pattern):
    path = _sidecar(tmp_path, **doc)
    with pytest.raises(ProductError, match=pattern) as e:
        read_product(path)
    assert str(path) in str(e.value)


def test_write_sidecar_roundtrip_and_check(tmp_path):
    (tmp_path / "d.tif").write_bytes(b"")
    path = write_sidecar(tmp_path / "s" / "x.json", id="x", acquired="2012-03-04T05:06:07Z", dem=tmp_path / "d.tif")
    doc = json.loads(path.read_text())
    assert doc["acquired"] == "2012-03-04T05:06:07Z"
    assert read_product(path).rasters["dem"] == (tmp_path / "d.tif").resolve()
    with pytest.raises(ProductError, match="hoa_m"):
        write_sidecar(
            tmp_path / "y.json", id="y", acquired="2012-03-04", dem=tmp_path / "d.tif", coherence=tmp_path / "d.tif"
        )


def test_content_hash_changes_with_bytes_and_metadata(tmp_path):
    (tmp_path / "dem.tif").write_bytes(b"abc")
    p = read_product(_sidecar(tmp_path))
    h = p.content_hash()
    (tmp_path / "dem.tif").write_bytes(b"abd")
    assert p.content_hash() != h
    (tmp_path / "dem.tif").write_bytes(b"abc")
    assert read_product(_sidecar(tmp_path, sensor="other")).content_hash() != h
    assert read_product(_sidecar(tmp_path)).content_hash() == h
