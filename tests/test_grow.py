"""Detections grown into the significant loss around them (rtsflow.kernels.grow)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from rtsflow.config import ConfigError, parse_config
from rtsflow.graph.polygons import grown_detections
from rtsflow.grid import Grid
from rtsflow.kernels.grow import OutlineGrowth, grow_detections, growth_halo_px


def test_a_detected_toe_grows_over_its_slump_and_nowhere_else():
    ddem_norm = np.zeros((40, 60))
    ddem_norm[5:25, 5:30] = -4.0  # a slump: loss of 4σ
    ddem_norm[5:25, 31:40] = -4.0  # another loss, one stable column away
    ddem_norm[10, 10] = np.nan  # no valid dDEM: never joins
    ddem_norm[30:35, 45:50] = -4.0  # loss under a speck below the seed size
    detected = np.zeros_like(ddem_norm, dtype=bool)
    detected[20:25, 20:25] = True  # the toe: 25 px = 2 500 m² at 10 m
    detected[32, 47] = True  # a 1-px speck
    growth = OutlineGrowth(k_sigma=2.0, max_steps=50, min_seed_m2=1000.0)
    grown = grow_detections(detected, ddem_norm, growth=growth, resolution=10.0)
    slump = ddem_norm[:, :30] <= -2
    assert (grown[:, :30] == slump).all()  # the whole slump but the NaN pixel
    assert not grown[10, 10] and not grown[:, 30:45].any()  # no jump over stable ground
    assert grown[30:35, 45:50].sum() == 1  # the speck stays a speck (the area rule drops it)
    # Steps: a region grows at most max_steps pixels along the loss.
    short = grow_detections(detected, ddem_norm, growth=OutlineGrowth(max_steps=3), resolution=10.0)
    assert short[:, :30].sum() < grown[:, :30].sum()
    assert short[17:20, 20:25].all() and not short[16, 20:25].any()
    # A weaker loss joins only at a lower k.
    weak = np.where(ddem_norm < 0, -1.5, ddem_norm)
    assert grow_detections(detected, weak, growth=growth, resolution=10.0).sum() == detected.sum()
    assert grow_detections(detected, weak, growth=OutlineGrowth(k_sigma=1.0), resolution=10.0).sum() > 400


@pytest.mark.parametrize("chunk", [23, 40, 64])
def test_growth_does_not_depend_on_chunks(chunk):
    rng = np.random.default_rng(3)
    ddem_norm = rng.normal(0, 1, (120, 150))
    for r, c in rng.integers(0, 110, (12, 2)):  # slumps of strong loss
        ddem_norm[r : r + 14, c : c + 18] -= 4
    prob = np.where(rng.random(ddem_norm.shape) < 0.5, (ddem_norm < -3).astype(float), 0.0)
    prob[::17, ::13] = np.nan
    growth = OutlineGrowth(k_sigma=2.0, max_steps=12, min_seed_m2=500.0)
    grid = Grid(resolution=10.0)
    whole = grow_detections(np.nan_to_num(prob) >= 0.5, ddem_norm, growth=growth, resolution=10.0)
    assert whole.sum() > (np.nan_to_num(prob) >= 0.5).sum() * 1.5  # it grew
    coords = {"y": np.arange(120.0)[::-1] * 10, "x": np.arange(150.0) * 10}
    p = xr.DataArray(da.from_array(prob, chunks=chunk), dims=("y", "x"), coords=coords)
    dn = xr.DataArray(da.from_array(ddem_norm, chunks=chunk), dims=("y", "x"), coords=coords)
    lazy = grown_detections(p, dn, grid=grid, threshold=0.5, growth=growth)
    assert isinstance(lazy.data, da.Array)  # lazy until asked
    np.testing.assert_array_equal(lazy.values, whole)
    assert growth_halo_px(growth, resolution=10.0) == 12 + 5


def test_grow_outlines_in_a_run_config_is_checked(tmp_path):
    (tmp_path / "c.zarr").mkdir()
    doc = {"cube": str(tmp_path / "c.zarr"), "pairs": [[2010, 2016]]}
    assert parse_config(doc, base=tmp_path).grow_outlines == OutlineGrowth()  # on by default
    assert parse_config({**doc, "grow_outlines": True}, base=tmp_path).grow_outlines == OutlineGrowth()
    assert parse_config({**doc, "grow_outlines": False}, base=tmp_path).grow_outlines is None
    assert parse_config({**doc, "grow_outlines": None}, base=tmp_path).grow_outlines is None
    with pytest.raises(ConfigError, match=r"grow_outlines\.max_steps"):
        parse_config({**doc, "grow_outlines": {"max_steps": 0}}, base=tmp_path)
    with pytest.raises(ConfigError, match=r"grow_outlines.*k_sigmaa"):
        parse_config({**doc, "grow_outlines": {"k_sigmaa": 2}}, base=tmp_path)
