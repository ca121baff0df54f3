"""The reduction: stitching, mass wasting, filters, densities, evaluation, outputs."""

from __future__ import annotations

from dataclasses import replace

import dask.array as da
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import rasterio.features
import rasterio.mask
import shapely
import shapely.affinity
import xarray as xr
from scipy import ndimage

from rtsflow.evaluate import evaluate_by_site, evaluate_polygons, evaluate_rasters
from rtsflow.graph.densities import regional_densities
from rtsflow.graph.masswasting import measure
from rtsflow.graph.polygons import vectorize
from rtsflow.grid import DEFAULT_GRID, Window
from rtsflow.io.vectors import read_metadata, run_metadata, write_vectors
from rtsflow.postprocess import FilterConfig, apply_filters
from rtsflow.synth.scene import Scene

from .conftest import shared

GRID = DEFAULT_GRID


@pytest.fixture(scope="module")
def ellesmere():
    ref = gpd.read_file(shared("maier2025_ellesmere", "reference_postprocessed.geojson"))
    pred = gpd.read_file(shared("maier2025_ellesmere", "prediction_postprocessed.geojson"))
    window = GRID.snap(GRID.window_from_bounds(tuple(ref.total_bounds)), to="tile")
    return ref, pred, window


def _as_array(values: np.ndarray, window: Window, chunk: int) -> xr.DataArray:
    x, y = GRID.coords(window)
    return xr.DataArray(da.from_array(values, chunks=chunk), dims=("y", "x"), coords={"x": x, "y": y})


def _normalised(gdf: gpd.GeoDataFrame) -> list:
    return sorted(shapely.normalize(g).wkb for g in gdf.geometry)


def test_stitched_polygons_equal_whole_raster_vectorisation(ellesmere):
    ref, _, window = ellesmere
    mask = rasterio.features.rasterize(ref.geometry, out_shape=window.shape, transform=GRID.transform(window))
    whole = vectorize(_as_array(mask, window, window.height), grid=GRID, threshold=None).compute(scheduler="sync")
    blocks = vectorize(_as_array(mask, window, 256), grid=GRID, threshold=None).compute(scheduler="sync")
    assert len(whole) == len(blocks) == ndimage.label(mask)[1]
    crossing = blocks.blocks.str.contains(";")
    assert crossing.sum() >= 10  # many slumps straddle the 256-px block edges
    assert _normalised(whole) == _normalised(blocks)
    assert list(whole.rts_id) == list(blocks.rts_id)  # stable ids
    for g in blocks.geometry:
        assert g.is_valid and g.geom_type == "Polygon"


def test_vectorising_in_threads_equals_one_at_a_time_and_warns_nothing(ellesmere):
    """rasterio's shapes() under concurrent threads: same polygons, and no spurious NotGeoreferencedWarning."""
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from rtsflow.kernels.vectorize import vectorize_block

    ref, _, window = ellesmere
    mask = rasterio.features.rasterize(ref.geometry, out_shape=window.shape, transform=GRID.transform(window))
    b = 256
    blocks = [(i, j) for i in range(window.height // b) for j in range(window.width // b)]

    def one(ij):
        i, j = ij
        w = Window(window.row + i * b, window.col + j * b, b, b)
        piece = vectorize_block(mask[i * b : (i + 1) * b, j * b : (j + 1) * b] > 0, transform=GRID.transform(w),
                                block=ij)  # fmt: skip
        return [g.wkb for g in piece.interior] + [g.wkb for _, g in sorted(piece.edge.items())]

    alone = [one(ij) for ij in blocks] * 4
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(one, blocks * 4))
    assert sum(map(len, together)) > 50
    assert together == alone
    assert not [w for w in caught if issubclass(w.category, rasterio.errors.NotGeoreferencedWarning)]


def test_rasterising_in_threads_equals_one_at_a_time_and_warns_nothing(ellesmere):
    """rasterio's rasterize() (zonal sums, density zones) under concurrent threads: same rasters, no warning.

    Unserialised, 4000 calls on 4 threads gave a NotGeoreferencedWarning in each of 3 runs here.
    """
    import warnings
    from concurrent.futures import ThreadPoolExecutor

    from rtsflow.kernels import gdal

    ref, _, window = ellesmere
    b = 64
    windows = [Window(window.row + i * b, window.col + j * b, b, b)
               for i in range(window.height // b) for j in range(window.width // b)]  # fmt: skip
    boxes = [(i, shapely.box(*GRID.bounds(w))) for i, w in enumerate(windows)]
    # As the zonal sums do: the polygons that meet a block, labelled by their index.
    shapes = {k: [(g, i + 1) for i, g in enumerate(ref.geometry) if g.intersects(box)] for k, box in boxes}
    windows = [(k, w) for k, w in enumerate(windows) if shapes[k]]
    assert len(windows) >= 20

    def one(kw):
        k, w = kw
        return gdal.rasterize(shapes[k], out_shape=w.shape, transform=GRID.transform(w), fill=0, dtype="int32")

    alone = [one(kw) for kw in windows]
    n = max(1, 4000 // len(windows))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(one, windows * n))
    assert sum((a > 0).any() for a in alone) >= 20
    for k, got in enumerate(together):
        np.testing.assert_array_equal(got, alone[k % len(windows)])
    assert not [w for w in caught if issubclass(w.category, rasterio.errors.NotGeoreferencedWarning)]


def test_block_tasks_in_threads_may_share_one_polygon_table(monkeypatch):
    """Every block task of a worker gets the same GeoDataFrame; threads select from it together.

    GEOS predicates on shared geometries are not thread-safe once a geometry is prepared
    (``contains_xy`` and ``prep`` leave one on the object): ``.cx``'s ``intersects`` in
    ``polygon_labels`` crashed the process (segfault) in the lazy API's threaded runs here, and hung CI.
    So the lazy API hands out no prepared geometry, and block functions select by bounding boxes.
    """
    from concurrent.futures import ThreadPoolExecutor

    from rtsflow.graph.error_model import window_sums
    from rtsflow.graph.masswasting import polygon_labels
    from rtsflow.kernels.select import polygons_in_box

    # Hundreds of polygons, most of them cut by the 128-px windows: many tasks meet each one.
    n, b = 512, 128
    rng = np.random.default_rng(1)
    mask = ndimage.gaussian_filter(rng.normal(size=(n, n)), 3) > 0.12
    window = Window(GRID.block_size * 40, GRID.block_size * 40, n, n)
    polygons = vectorize(_as_array(mask, window, b), grid=GRID, threshold=0.5).compute(scheduler="threads")
    geoms = np.asarray(polygons.geometry.values, dtype=object)
    assert len(geoms) > 300 and not shapely.is_prepared(geoms).any()
    windows = [Window(window.row + r, window.col + c, b, b) for r in range(0, n, b) for c in range(0, n, b)]
    ddem = rng.normal(size=(b, b))
    for w in windows:
        box = GRID.bounds(w)
        # The box test selects what .cx selects and more (boxes meeting, shapes not); the labels burn the mask.
        assert set(polygons.cx[box[0] : box[2], box[1] : box[3]].index) <= set(polygons_in_box(polygons, box).index)
        r, c = w.row - window.row, w.col - window.col
        np.testing.assert_array_equal(polygon_labels(polygons, grid=GRID, window=w) > 0, mask[r : r + b, c : c + b])

    def task(w):
        return (polygon_labels(polygons, grid=GRID, window=w),
                window_sums(ddem, np.ones_like(ddem), None, None, polygons, grid=GRID, window=w))  # fmt: skip

    alone = [task(w) for w in windows]
    shapely.prepare(geoms)  # as a user's own table may come
    for name in ("intersects", "within", "contains", "covers", "covered_by", "overlaps", "touches", "crosses"):
        monkeypatch.setattr(shapely, name, lambda *a, _n=name, **k: pytest.fail(f"GEOS predicate {_n} in a block task"))
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            together = list(pool.map(task, windows * 3))
            for (la, sa), (lt, st) in zip(alone * 3, together, strict=True):
                np.testing.assert_array_equal(la, lt)
                for x, y in zip(sa, st, strict=True):
                    np.testing.assert_array_equal(x, y)


def test_threshold_and_nan(ellesmere):
    _, _, window = ellesmere
    prob = np.zeros((512, 512), "float32")
    prob[10:20, 10:20] = 0.7
    prob[100:110, 100:110] = 0.4
    prob[200:210, 200:210] = np.nan
    w = Window(window.row, window.col, 512, 512)
    g = vectorize(_as_array(prob, w, 128), grid=GRID, threshold=0.5).compute(scheduler="sync")
    assert len(g) == 1 and g.grid_area_m2.iloc[0] == pytest.approx(100 * 100.0)
    g = vectorize(_as_array(prob, w, 128), grid=GRID, threshold=0.3).compute(scheduler="sync")
    assert len(g) == 2


def test_evaluation_reproduces_paper_table2(ellesmere):
    ref, pred, _ = ellesmere
    m = evaluate_polygons(pred, ref)
    # Maier et al. 2025, Table 2, Ellesmere TP1, UNet++ post-processed.
    assert m.pixel_iou == pytest.approx(0.75, abs=0.01)
    assert m.pixel_f1 == pytest.approx(0.86, abs=0.01)
    assert m.pixel_precision == pytest.approx(0.90, abs=0.01)
    assert m.pixel_recall == pytest.approx(0.82, abs=0.01)
    assert m.detection_f1 == pytest.approx(0.83, abs=0.015)
    assert m.detection_precision == pytest.approx(0.92, abs=0.015)
    assert m.detection_recall == pytest.approx(0.76, abs=0.015)
    assert m.detection_iou == pytest.approx(0.80, abs=0.02)


def test_raster_and_polygon_evaluation_agree(ellesmere):
    ref, pred, window = ellesmere
    t = GRID.transform(window)
    r = rasterio.features.rasterize(ref.geometry, out_shape=window.shape, transform=t).astype(bool)
    p = rasterio.features.rasterize(pred.geometry, out_shape=window.shape, transform=t).astype(bool)
    mr, mp = evaluate_rasters(p, r), evaluate_polygons(pred, ref)
    for k in ("pixel_iou", "pixel_f1", "pixel_precision", "pixel_recall", "detection_precision", "detection_recall"):
        assert getattr(mr, k) == pytest.approx(getattr(mp, k), abs=0.03), k
    # Perfect prediction and empty prediction.
    assert evaluate_rasters(r, r).pixel_iou == 1.0 and evaluate_rasters(r, r).detection_f1 == 1.0
    empty = evaluate_polygons(pred.iloc[:0], ref)
    assert empty.pixel_recall == 0.0 and np.isnan(empty.detection_precision)


def test_evaluation_by_site(ellesmere):
    ref, pred, _ = ellesmere
    minx, miny, maxx, maxy = ref.total_bounds
    mid = (minx + maxx) / 2
    sites = gpd.GeoDataFrame({"name": ["west", "east"]},
                             geometry=[shapely.box(minx - 10, miny - 10, mid, maxy + 10),
                                       shapely.box(mid, miny - 10, maxx + 10, maxy + 10)], crs=3413)  # fmt: skip
    table = evaluate_by_site(pred, ref, sites)
    assert list(table.site) == ["west", "east", "overall"]
    assert table.n_reference[:2].sum() == len(ref)


def _constant_dh_features(ref: gpd.GeoDataFrame, window: Window, chunk: int):
    shapes = zip(ref.geometry, range(1, len(ref) + 1), strict=True)
    labels = rasterio.features.rasterize(
        shapes, out_shape=window.shape, transform=GRID.transform(window), dtype="int32"
    )
    dh = np.concatenate([[np.nan], ref["avg_height_change"].to_numpy()])[labels].astype("float32")
    x, y = GRID.coords(window)
    arr = lambda a: (("y", "x"), da.from_array(a, chunks=chunk))  # noqa: E731
    feats = xr.Dataset(
        {"ddem": arr(dh), "ddem_sigma": arr(np.full(window.shape, 1.0, "float32")),
         "water": arr(np.zeros(window.shape, "uint8")), "quality": arr(np.zeros(window.shape, "uint8"))},
        coords={"x": x, "y": y}, attrs={"years": 6.0, "earlier": 2010, "later": 2016},
    )  # fmt: skip
    return feats, labels, dh


def test_volumes_nominal_exact_and_true_area_scaled(ellesmere):
    ref, _, window = ellesmere
    feats, labels, _ = _constant_dh_features(ref, window, 512)
    out = measure(ref, feats, grid=GRID).compute(scheduler="sync")
    n = np.bincount(labels.ravel(), minlength=len(ref) + 1)[1:]
    expected_nominal = 100.0 * ref["avg_height_change"].to_numpy() * n
    np.testing.assert_allclose(out.volume_nominal_m3, expected_nominal, rtol=1e-6)
    # The paper's tot_volume_change = 100 × Σdh over its own pixel tracing.
    close = np.isclose(out.volume_nominal_m3, ref.tot_volume_change, rtol=0.15)
    assert close.mean() > 0.9
    # True ground area: 10 m cells at 79.6°N cover 100 / 0.956 m².
    ratio = out.volume_m3 / out.volume_nominal_m3
    scale = GRID.areal_scale(out.centroid_x if "centroid_x" in out else ref.centroid.x, ref.centroid.y)
    assert np.median(scale) == pytest.approx(0.956, abs=0.003)
    np.testing.assert_allclose(ratio, 1.0 / scale, rtol=2e-4)
    assert (out.years == 6.0).all()
    np.testing.assert_allclose(out.volume_per_year_m3, out.volume_m3 / 6.0)
    # Loss-depth layers add up to the loss volume.
    layers = out[[c for c in out.columns if c.startswith("loss_") and c.endswith("m_m3")]].sum(axis=1)
    np.testing.assert_allclose(layers, out.loss_m3, rtol=1e-9)


def test_vectorised_zonal_stats_equal_per_polygon_mask(ellesmere, tmp_path):
    ref, _, window = ellesmere
    feats, _, dh = _constant_dh_features(ref.iloc[:40], window, 1024)
    rng = np.random.default_rng(0)
    dh = np.where(np.isfinite(dh), dh + rng.normal(0, 1, dh.shape), np.nan).astype("float32")
    feats["ddem"] = (("y", "x"), da.from_array(dh, chunks=1024))
    out = measure(ref.iloc[:40], feats, grid=GRID).compute(scheduler="sync")
    path = tmp_path / "ddem.tif"
    profile = {"driver": "GTiff", "height": window.height, "width": window.width, "count": 1, "dtype": "float32",
               "crs": "EPSG:3413", "transform": GRID.transform(window), "nodata": np.nan}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(dh, 1)
    with rasterio.open(path) as src:
        for k, geom in enumerate(ref.geometry.iloc[:40]):
            clip, _ = rasterio.mask.mask(src, [geom], crop=True, nodata=np.nan)
            v = clip[0][np.isfinite(clip[0])]
            assert out.volume_nominal_m3.iloc[k] == pytest.approx(100.0 * v.sum(), rel=1e-5)
            assert out.max_abs_dh_m.iloc[k] == pytest.approx(np.abs(v).max(), rel=1e-6)


def test_a_void_adds_its_area_times_the_spread_of_dh(ellesmere):
    """Where part of a polygon has no dDEM, σ_V gains (A − A_valid) · SD(dh over the valid pixels) in quadrature."""
    ref, _, window = ellesmere
    ref = ref.iloc[:40]
    feats, labels, dh = _constant_dh_features(ref, window, 1024)
    rng = np.random.default_rng(1)
    dh = np.where(np.isfinite(dh), dh + rng.normal(0, 2, dh.shape), np.nan)
    rows = np.arange(window.height)[:, None] * np.ones(window.width)
    voided = (labels % 2 == 1) & (rows % 3 == 0)  # every other polygon loses a third of its rows
    dh = np.where(voided, np.nan, dh).astype("float32")
    feats["ddem"] = (("y", "x"), da.from_array(dh, chunks=1024))
    out = measure(ref, feats, grid=GRID).compute(scheduler="sync")
    for k in range(len(ref)):
        v = dh[labels == k + 1]
        valid = v[np.isfinite(v)]
        if k % 2 == 1:  # labels k + 1 even: untouched
            assert out.volume_void_sigma_m3.iloc[k] == 0.0
            continue
        missing = out.area_m2.iloc[k] * (1.0 - valid.size / v.size)  # (pixel areas vary by < 0.1 % in one slump)
        assert out.volume_void_sigma_m3.iloc[k] == pytest.approx(missing * valid.std(ddof=1), rel=2e-3)
    assert (out.volume_sigma_m3 >= out.volume_void_sigma_m3).all()
    assert (out.volume_local_sigma_m3.dropna() >= out.volume_void_sigma_m3[out.volume_local_sigma_m3.notna()]).all()


def test_filters_keep_an_audit_trail():
    t = pd.DataFrame({
        "area_nominal_m2": [5000, 900, 5000, 5000, 5000],
        "area_m2": [5200, 950, 5200, 5200, 5200],
        "water_fraction": [0.0, 0.0, 0.6, 0.0, 0.0],
        "quality_fraction": [0.1, 0.0, 0.0, 0.7, 0.0],
        "max_abs_dh_m": [5.0, 3.0, 4.0, 4.0, 1.5], "circularity": [0.5] * 5,
    })  # fmt: skip
    out = apply_filters(gpd.GeoDataFrame(t, geometry=[shapely.Point(0, 0)] * 5))
    assert out.kept.tolist() == [True, False, False, False, False]
    assert out.filter_reason.tolist()[1:] == ["area < 1000 m²", "water overlap > 50%",
                                              "SAR-quality mask overlap > 50%", "max |dh| < 2 m"]  # fmt: skip
    relaxed = apply_filters(gpd.GeoDataFrame(t, geometry=[shapely.Point(0, 0)] * 5),
                            config=FilterConfig(min_max_abs_dh_m=None, min_area_m2=None))  # fmt: skip
    assert relaxed.kept.tolist() == [True, True, False, False, True]


def test_significance_and_net_loss_filters():
    """|V| < k·σ and net gains are dropped only when asked for, each with its reason."""
    t = pd.DataFrame({
        "area_nominal_m2": [5000.0] * 4, "area_m2": [5000.0] * 4, "water_fraction": [0.0] * 4,
        "quality_fraction": [0.0] * 4, "max_abs_dh_m": [5.0] * 4, "circularity": [0.5] * 4,
        "volume_m3": [-3000.0, -300.0, 2500.0, np.nan], "volume_sigma_m3": [500.0, 200.0, 400.0, 100.0],
    })  # fmt: skip
    frame = gpd.GeoDataFrame(t, geometry=[shapely.Point(0, 0)] * 4)
    assert apply_filters(frame).kept.tolist() == [True] * 4  # off by default: the paper's filters only
    out = apply_filters(frame, config=FilterConfig(min_volume_snr=2.0, max_volume_m3=0.0))
    assert out.kept.tolist() == [True, False, False, False]
    assert out.filter_reason.tolist() == ["", "|volume| < 2 σ", "volume > 0 m³", "|volume| < 2 σ; volume > 0 m³"]


def test_circularity_rule_keeps_every_real_slump_and_drops_bank_strips(ellesmere):
    """The default least circularity (0.2) is below every real RTS as our pipeline traces it on the 10 m grid:
    Maier et al.'s 279 reference outlines and their UNet++ detections that hit one; a strip of bank erosion
    (400 × 20 m, the generator's bank confounders are 200–800 m long) and a frayed ice-margin piece are dropped."""
    ref, pred, window = ellesmere
    shape_only = FilterConfig(min_area_m2=None, max_water_fraction=None, max_quality_fraction=None,
                              min_max_abs_dh_m=None)  # fmt: skip
    assert shape_only.min_circularity == 0.2  # the default
    transform = GRID.transform(window)
    for outlines in (ref.geometry, pred.geometry[pred.intersects(ref.union_all())]):
        mask = rasterio.features.rasterize(outlines, out_shape=window.shape, transform=transform)
        traced = vectorize(_as_array(mask, window, 512), grid=GRID, threshold=None).compute(scheduler="sync")
        assert len(traced) > 150
        assert traced.circularity.min() >= 0.2
        assert apply_filters(traced, config=shape_only).kept.all()
    cx, cy = transform @ (window.width / 2, window.height / 2)
    strip = shapely.affinity.rotate(shapely.box(cx - 200, cy - 10, cx + 200, cy + 10), 30)
    frayed = shapely.union_all([shapely.box(cx - 300 + 60 * i, cy + 300, cx - 270 + 60 * i, cy + 420)
                                for i in range(6)] + [shapely.box(cx - 300, cy + 280, cx + 30, cy + 300)])  # fmt: skip
    lobe = shapely.Point(cx + 400, cy - 400).buffer(45)  # a 0.6 ha slump
    mask = rasterio.features.rasterize([strip, frayed, lobe], out_shape=window.shape, transform=transform)
    traced = vectorize(_as_array(mask, window, 512), grid=GRID, threshold=None).compute(scheduler="sync")
    out = apply_filters(traced, config=shape_only).sort_values("circularity")
    assert len(out) == 3
    assert out.kept.tolist() == [False, False, True]
    assert out.filter_reason.tolist()[:2] == ["circularity < 0.2"] * 2
    assert apply_filters(traced, config=replace(shape_only, min_circularity=None)).kept.all()
    # Nothing found: the same columns, so the rule has a column to read.
    none = vectorize(_as_array(np.zeros_like(mask), window, 512), grid=GRID, threshold=None).compute(scheduler="sync")
    assert set(traced.columns) == set(none.columns)
    assert len(apply_filters(none, config=shape_only)) == 0


def test_correlated_uncertainty_is_calibrated():
    """Known slump volumes + spatially correlated noise: how often does ±1σ contain the truth?"""
    window = Window(562_000, 380_000, 1536, 1536)
    x, y = GRID.coords(window)
    scene = Scene(seed=4, slump_density=3.0, epochs=(2010, 2016))
    truth = scene.slump_change(x, y, 1, since=0)
    s_px, sigma = 10.0, 1.0  # Gaussian-correlated noise, correlation length L = 2 s = 200 m
    rng = np.random.default_rng(0)
    noise = ndimage.gaussian_filter(rng.standard_normal(window.shape), s_px)
    noise *= sigma / noise.std()
    slumps = [s for s in scene.slumps(GRID.bounds(window)) if s.fractions[1] > 0]
    geoms, true_vol = [], []
    area = GRID.pixel_ground_area(window, step=16)
    for s in slumps:
        mask = s.footprint(x, y, s.fractions[1])
        if mask.sum() < 10 or mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any():
            continue
        shapes = [shapely.geometry.shape(g) for g, v in rasterio.features.shapes(
            mask.astype("uint8"), mask=mask, transform=GRID.transform(window)) if v == 1]  # fmt: skip
        geoms.append(shapely.union_all(shapes))
        true_vol.append(float((truth * area)[mask].sum()))
    assert len(geoms) > 60
    feats = xr.Dataset(
        {"ddem": (("y", "x"), da.from_array((truth + noise).astype("float32"), chunks=512)),
         "ddem_sigma": (("y", "x"), da.from_array(np.full(window.shape, sigma, "float32"), chunks=512))},
        coords={"x": x, "y": y}, attrs={"years": 6.0},
    )  # fmt: skip
    polys = gpd.GeoDataFrame(geometry=geoms, crs=3413)
    out = measure(polys, feats, grid=GRID, correlation_length=2 * s_px * 10).compute(scheduler="sync")
    err = np.abs(out.volume_m3.to_numpy() - np.array(true_vol))
    cover_eq8 = np.mean(err <= out.volume_sigma_eq8_m3.to_numpy())
    cover_corr = np.mean(err <= out.volume_sigma_m3.to_numpy())
    # The default: the error model fitted on the terrain outside the polygons (no length given).
    auto = measure(polys, feats, grid=GRID).compute(scheduler="sync")
    cover_auto = np.mean(err <= auto.volume_sigma_m3.to_numpy())
    print(f"1σ coverage: Eq. 8 {cover_eq8:.2f}, correlated {cover_corr:.2f}, fitted {cover_auto:.2f} "
          f"({auto.attrs['error_model']}) over {len(geoms)} slumps")  # fmt: skip
    assert 0.55 <= cover_corr <= 0.80
    assert 0.55 <= cover_auto <= 0.80
    assert cover_eq8 < 0.4  # independent-pixel errors are far too optimistic here


def test_regional_densities_cells_and_sites(ellesmere):
    ref, _, window = ellesmere
    feats, _, _ = _constant_dh_features(ref, window, 1024)
    feats["ddem"] = feats["ddem"].fillna(0.0)  # valid everywhere
    q = np.zeros(window.shape, "uint8")
    q[: window.height // 2] = 1  # northern half unusable
    feats["quality"] = (("y", "x"), da.from_array(q, chunks=1024))
    rts = measure(ref, feats, grid=GRID).compute(scheduler="sync")
    cells = regional_densities(rts, feats, grid=GRID, cell_size=20_000).compute(scheduler="sync")
    total_valid = (GRID.pixel_ground_area(window, step=16) * (q == 0)).sum() / 1e6
    assert cells.valid_area_km2.sum() == pytest.approx(total_valid, rel=1e-9)
    assert cells.n_rts.sum() == len(rts)
    assert cells.volume_m3.sum() == pytest.approx(rts.volume_m3.sum())
    with np.errstate(divide="ignore", invalid="ignore"):
        rate = cells.volume_m3 / 6.0 / cells.valid_area_km2
    np.testing.assert_allclose(cells.volume_change_rate_m3_per_yr_km2, rate)
    minx, miny, maxx, maxy = GRID.bounds(window)
    sites = gpd.GeoDataFrame({"name": ["all"]}, geometry=[shapely.box(minx, miny, maxx, maxy)], crs=3413)
    one = regional_densities(rts, feats, grid=GRID, regions=sites).compute(scheduler="sync")
    assert one.valid_area_km2.iloc[0] == pytest.approx(total_valid, rel=1e-9)
    assert one.volume_change_rate_m3_per_yr_km2.iloc[0] == pytest.approx(rts.volume_m3.sum() / 6 / total_valid)
    with pytest.raises(ValueError, match="exactly one"):
        regional_densities(rts, feats, grid=GRID)
    assert one.land_area_km2.isna().all() and one.volume_void_filled_m3.isna().all()  # no reference: unknown


def test_void_filled_volume_carries_the_density_over_the_land_under_voids(ellesmere):
    """Half the ground under the quality mask, a tenth water: the land is the rest, and the volume of the
    valid half carried over it is what the slumps removed when the masked half holds as many."""
    ref, _, window = ellesmere
    feats, _, _ = _constant_dh_features(ref, window, 1024)
    feats["ddem"] = feats["ddem"].fillna(0.0)
    q = np.zeros(window.shape, "uint8")
    q[: window.height // 2] = 1
    w = np.zeros(window.shape, "uint8")
    w[:, : window.width // 10] = 1
    feats["quality"] = (("y", "x"), da.from_array(q, chunks=1024))
    feats["water"] = (("y", "x"), da.from_array(w, chunks=1024))
    rts = measure(ref, feats, grid=GRID).compute(scheduler="sync")
    dem = xr.DataArray(np.ones(window.shape, "float32"), coords={"y": feats.y, "x": feats.x}, dims=("y", "x"))
    area = GRID.pixel_ground_area(window, step=16)
    valid, land = (area * (q == 0) * (w == 0)).sum() / 1e6, (area * (w == 0)).sum() / 1e6
    minx, miny, maxx, maxy = GRID.bounds(window)
    site = gpd.GeoDataFrame({"name": ["all"]}, geometry=[shapely.box(minx, miny, maxx, maxy)], crs=3413)
    one = regional_densities(rts, feats, grid=GRID, regions=site, reference=dem).compute(scheduler="sync").iloc[0]
    assert one.valid_area_km2 == pytest.approx(valid, rel=1e-9)
    assert one.land_area_km2 == pytest.approx(land, rel=1e-9)
    assert one.volume_void_filled_m3 == pytest.approx(one.volume_m3 * land / valid, rel=1e-9)
    # σ: the scaled measurement σ and the sampling of the carried part over √n.
    scale = land / valid
    sampling = abs(one.volume_m3) * (scale - 1) / np.sqrt(one.n_rts)
    assert one.volume_void_filled_sigma_m3 == pytest.approx(np.hypot(one.volume_sigma_m3 * scale, sampling))
    # The cells add up to the same land, and a reference with NaN holes leaves them out of the land
    # unless the dDEM is valid there.
    holes = dem.where(xr.DataArray(np.arange(window.width) % 2 == 0, dims="x"))
    cells = regional_densities(rts, feats, grid=GRID, cell_size=20_000, reference=holes).compute(scheduler="sync")
    odd = (np.arange(window.width) % 2 == 1)[None, :]
    expect = (area * (w == 0) * ((~odd) | (q == 0))).sum() / 1e6
    assert cells.land_area_km2.sum() == pytest.approx(expect, rel=1e-9)
    with pytest.raises(ValueError, match="reference: not on the features' grid"):
        regional_densities(rts, feats, grid=GRID, regions=site, reference=dem.isel(x=slice(0, 100)))


@pytest.mark.parametrize("suffix", [".parquet", ".gpkg"])
def test_outputs_with_metadata(ellesmere, tmp_path, suffix):
    ref, _, _ = ellesmere
    meta = run_metadata(config={"threshold": 0.5}, model_sha256="abc", features="f.zarr")
    path = write_vectors(ref.iloc[:5], tmp_path / f"rts{suffix}", metadata=meta)
    back = gpd.read_file(path, layer="rts") if suffix == ".gpkg" else gpd.read_parquet(path)
    assert len(back) == 5 and back.crs.to_epsg() == 3413
    got = read_metadata(path)
    assert got["model_sha256"] == "abc" and got["config"] == {"threshold": 0.5} and "versions" in got
    assert not list(tmp_path.glob(".*tmp*"))


def test_regional_volume_rate_matches_implanted_truth(demo_run):
    """End to end on the demo's synthetic region: products → cube → features stage (co-registration on)
    → the implanted slump outlines measured on the features → regional rate equals the implanted one."""
    from rtsflow.io.features import open_features
    from rtsflow.synth.generator import SynthRegion

    out, _ = demo_run
    region = SynthRegion.load(out / "region")
    feats = open_features(out / "run" / "features_2010_2016.zarr")
    truth = gpd.read_parquet(region.truth_slumps)
    truth = truth[(truth.winter_start == 2010) & (truth.winter_end == 2016)].reset_index(drop=True)
    assert len(truth) > 20
    measured = measure(truth[["geometry"]], feats, grid=GRID).compute(scheduler="threads")
    site = gpd.GeoDataFrame({"name": ["region"]}, geometry=[shapely.box(*GRID.bounds(region.window))], crs=3413)
    dens = regional_densities(measured, feats, grid=GRID, regions=site).compute(scheduler="threads")
    truth_rate = truth.volume_m3.sum() / 6.0 / dens.valid_area_km2.iloc[0]
    rate = dens.volume_change_rate_m3_per_yr_km2.iloc[0]
    print(f"volume-change rate: measured {rate:.0f}, implanted {truth_rate:.0f} m³/yr/km²")
    assert rate == pytest.approx(truth_rate, rel=0.05)
    assert dens.n_rts.iloc[0] == len(truth)


def test_ignored_reference_objects_count_neither_way():
    """A masked slump (B) is dropped with the predictions that hit only it and the predicted area inside it."""
    a, b = shapely.box(0, 0, 10, 10), shapely.box(20, 0, 30, 10)
    pred = gpd.GeoSeries([shapely.box(0, 0, 5, 10), shapely.box(22, 2, 28, 8), shapely.box(40, 0, 45, 5),
                          shapely.box(8, 0, 22, 10)])  # fmt: skip
    ref = gpd.GeoSeries([a, b])
    plain = evaluate_polygons(pred, ref)
    assert (plain.detection_precision, plain.detection_recall, plain.n_ignored) == (0.75, 1.0, 0)
    m = evaluate_polygons(pred, ref, ignore=np.array([False, True]))
    assert (m.n_reference, m.n_predicted, m.n_ignored) == (1, 3, 1)
    assert m.detection_precision == pytest.approx(2 / 3) and m.detection_recall == 1.0
    # Predicted area: 50 + (box(8, 0, 20, 10) = 120) + 25; true positive area 50 + 20 of A's 100.
    assert m.pixel_precision == pytest.approx(70 / 195) and m.pixel_recall == pytest.approx(0.7)
    assert m.pixel_iou == pytest.approx(70 / 225)
    with pytest.raises(ValueError, match="one flag per reference object"):
        evaluate_polygons(pred, ref, ignore=np.array([True]))
