"""RTS histories on a synthetic three-epoch scene with known growth between periods.

Slumps (rtsflow.synth.scene.Slump: the toe stays, the headwall retreats upslope as a slump grows) are
implanted on a tilted plane with DEM noise, in five kinds: growing, stabilised, new in the second
period, steadily active, and pairs that grow into each other (merge). Detection is not under test here:
each period's RTS mask is the truth (the scars that changed), traced, measured and filtered by the lazy
API like model output; the linking, statuses, initiation brackets, headwall retreat and period totals are.
"""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr

from rtsflow.grid import Grid, Window
from rtsflow.history import HistoryRules, Period, link_periods, period_totals
from rtsflow.postprocess import FilterConfig
from rtsflow.reduce import detect_rts
from rtsflow.synth.scene import Slump

GRID = Grid(resolution=10.0, tile_size=64, block_tiles=2)
WINDOW = Window(row=700_000, col=300_000, height=640, width=640)
EPOCHS = (2010, 2016, 2020)
EAST, NORTH = 0.06, 0.03  # plane gradient; slumps face downhill
NOISE = 0.4  # m, per DEM
KINDS = {  # growth fraction at each epoch → truth per period
    "growing": (0.2, 0.6, 1.0),
    "stabilised": (0.3, 1.0, 1.0),
    "new_p2": (0.0, 0.0, 1.0),
    "active": (0.5, 0.75, 0.8),
    "merge": (0.0, 0.05, 1.0),
}
TRUTH = {  # kind → (status in P1, status in P2, initiated_after, initiated_by)
    "growing": ("new", "grew", np.nan, 2016),
    "stabilised": ("new", "stabilised", np.nan, 2016),
    "new_p2": (None, "new", 2016, 2020),
    "active": ("new", "active", np.nan, 2016),
    "merge_big": ("new", "grew", np.nan, 2016),
    "merge_small": ("new", "merged", np.nan, 2016),
}


def _slumps() -> list[tuple[str, Slump]]:
    x, y = GRID.coords(WINDOW)
    down = -np.array([EAST, NORTH]) / np.hypot(EAST, NORTH)
    across = np.array([-down[1], down[0]])
    rng = np.random.default_rng(11)
    out = []
    kinds = list(KINDS)
    for i in range(8):
        for j in range(8):
            cx, cy = x[0] + 400 + 800 * j, y[0] - 400 - 800 * i
            kind = kinds[(i * 8 + j) % len(kinds)]
            f = KINDS[kind]
            if kind == "merge":  # two slumps side by side: 18 m apart at 2016, overlapping by 25 m at 2020
                for name, side, length in (("merge_big", 1, 220.0), ("merge_small", -1, 180.0)):
                    c = np.array([cx, cy]) + across * side * 62.5
                    out.append((name, Slump(id=len(out), x=c[0], y=c[1], direction=tuple(down), length=length,
                                            width=150.0, depth=6.0, fractions=f)))  # fmt: skip
                continue
            length, width = rng.uniform(150, 240), rng.uniform(90, 140)
            out.append((kind, Slump(id=len(out), x=cx, y=cy, direction=tuple(down), length=length, width=width,
                                    depth=rng.uniform(3, 8), fractions=f)))  # fmt: skip
    return out


def _da(values, name):
    x, y = GRID.coords(WINDOW)
    return xr.DataArray(da.from_array(values.astype(np.float32), chunks=128), dims=("y", "x"),
                        coords={"x": x, "y": y}, name=name)  # fmt: skip


@pytest.fixture(scope="module")
def scene():
    x, y = GRID.coords(WINDOW)
    slumps = _slumps()
    plane = 50.0 + EAST * (x[None, :] - x[0]) + NORTH * (y[:, None] - y[0])
    rng = np.random.default_rng(5)
    surfaces = [plane + sum(s.elevation_change(x, y, s.fractions[e]) for _, s in slumps) for e in range(3)]
    dems = [s + rng.normal(0, NOISE, s.shape) for s in surfaces]
    area = GRID.pixel_ground_area(WINDOW, step=16)
    periods, truth_volume = [], {}
    for e0, e1 in ((0, 1), (1, 2)):
        mask = np.zeros(WINDOW.shape, bool)
        for _, s in slumps:
            if s.fractions[e1] > s.fractions[e0]:
                mask |= s.footprint(x, y, s.fractions[e1])
        key = f"{EPOCHS[e0]}_{EPOCHS[e1]}"
        feats = xr.Dataset({"ddem": _da(dems[e1] - dems[e0], "ddem"),
                            "ddem_sigma": _da(np.full(WINDOW.shape, NOISE * np.sqrt(2)), "ddem_sigma")},
                           attrs={"years": float(EPOCHS[e1] - EPOCHS[e0]), "earlier": EPOCHS[e0],
                                  "later": EPOCHS[e1]})  # fmt: skip
        rts = detect_rts(_da(mask, "mask"), feats, grid=GRID, threshold=None, dem=_da(dems[e0], "dem"),
                         filters=FilterConfig(min_max_abs_dh_m=None),
                         grow_outlines=None).compute(scheduler="threads")  # the true outlines, as drawn  # fmt: skip
        periods.append(Period(key=key, start=EPOCHS[e0], end=EPOCHS[e1], rts=rts[rts.kept]))
        truth_volume[key] = float(((surfaces[e1] - surfaces[e0]) * area)[mask].sum())
    return {"slumps": slumps, "periods": periods, "truth_volume": truth_volume,
            "history": link_periods(periods, rules=HistoryRules())}  # fmt: skip


def _slump_row(history, period, slump: Slump, fraction: float):
    """The history row of ``period`` whose outline overlaps the slump's scar most (None if none)."""
    import shapely

    rows = history[history.period == period]
    best, best_a = None, 0.0
    # The scar as a polygon: an ellipse sampled finely enough for overlap areas.
    cx, cy, length, width = slump.geometry_at(fraction)
    t = np.linspace(0, 2 * np.pi, 200)
    dx, dy = slump.direction
    ex, ey = length / 2 * np.cos(t), width / 2 * np.sin(t)
    scar = shapely.Polygon(np.c_[cx + ex * dx - ey * dy, cy + ex * dy + ey * dx])
    for _, r in rows.iterrows():
        a = r.geometry.intersection(scar).area
        if a > best_a:
            best, best_a = r, a
    return best


def test_identities_statuses_and_initiation(scene):
    hist, slumps = scene["history"], scene["slumps"]
    p1, p2 = (p.key for p in scene["periods"])
    correct, wrong = 0, []
    ids_of_big = {}
    for kind, s in slumps:
        status1, status2, after, by = TRUTH[kind]
        here = _slump_row(hist, p2, s, s.fractions[2])  # the P2 outline over its scar
        if status1:
            r1 = _slump_row(hist, p1, s, s.fractions[1])
            rows = hist[(hist.period == p2) & (hist.history_id == r1.history_id)] if r1 is not None else []
            r2 = rows.iloc[0] if len(rows) == 1 else None  # its history, one period on
            ok = r1 is not None and r1.status == status1 and r2 is not None and r2.status == status2
            if ok and kind == "merge_small":  # merged into the history whose outline now covers it
                ok = r2.merged_into == here.history_id != r2.history_id
            elif ok:
                ok = here.history_id == r2.history_id
        else:
            r1, r2 = None, here
            ok = r2 is not None and r2.status == status2
        ok = ok and ((np.isnan(after) and np.isnan(r2.initiated_after)) or r2.initiated_after == after)
        ok = ok and r2.initiated_by == by
        if kind == "merge_big" and r2 is not None:
            ids_of_big[s.id] = r2.history_id
        correct += bool(ok)
        if not ok:
            wrong.append((kind, s.id, None if r1 is None else r1.status, None if r2 is None else r2.status))
    assert correct / len(slumps) >= 0.95, wrong
    # Every "merged" row names a history that continues in the same period.
    merged = hist[hist.status == "merged"]
    assert len(merged) == sum(k == "merge_small" for k, _ in slumps)
    continuing = set(hist[(hist.period == p2) & (hist.rts_id >= 0)].history_id)
    assert set(merged.merged_into) <= continuing
    assert set(merged.merged_into) == set(ids_of_big.values())


def test_headwall_retreat_within_one_pixel(scene):
    hist, slumps = scene["history"], scene["slumps"]
    p2 = scene["periods"][1].key
    errors = []
    for kind, s in slumps:
        if kind not in ("growing", "active"):
            continue
        r2 = _slump_row(hist, p2, s, s.fractions[2])
        truth = 0.45 * s.length * (s.fractions[2] - s.fractions[1])
        errors.append(r2.headwall_retreat_m - truth)
    errors = np.abs(errors)
    assert len(errors) >= 20
    assert errors.max() <= GRID.resolution, errors


def test_period_volume_totals_within_two_sigma(scene):
    hist = scene["history"]
    totals = period_totals(hist)
    assert list(totals.period) == [p.key for p in scene["periods"]]
    for row in totals.itertuples():
        truth = scene["truth_volume"][row.period]
        assert abs(row.volume_m3 - truth) <= 2 * row.volume_sigma_m3, (row.period, row.volume_m3, truth)
        assert abs(row.volume_m3 - truth) < 0.05 * abs(truth)  # and close in absolute terms
    counts = totals.set_index("period")
    n = {k: sum(kind == k for kind, _ in scene["slumps"]) for k in TRUTH}
    p2 = scene["periods"][1].key
    assert counts.loc[p2, "n_stabilised"] == n["stabilised"]
    assert counts.loc[p2, "n_new"] == n["new_p2"]
    assert np.isfinite(counts.loc[p2, "rate_change_sigma_m3_per_yr"])


def test_split_and_reactivation_rules():
    """One outline splitting in two, and a stabilised slump found again, on hand-made polygons."""
    import geopandas as gpd
    import shapely

    def period(key, start, end, boxes):
        g = gpd.GeoDataFrame({"rts_id": range(len(boxes)), "area_m2": [b.area for b in boxes],
                              "volume_m3": -1.0, "volume_sigma_m3": 0.1, "aspect_grid_deg": 180.0},
                             geometry=boxes, crs="EPSG:3413")  # fmt: skip
        return Period(key=key, start=start, end=end, rts=g)

    big = shapely.box(0, 0, 100, 100)
    left, right = shapely.box(0, 0, 40, 110), shapely.box(60, 0, 100, 100)
    hist = link_periods([period("a", 0, 1, [big]), period("b", 1, 2, [left, right]), period("c", 2, 3, []),
                         period("d", 3, 4, [left])])  # fmt: skip
    b = hist[hist.period == "b"].set_index("rts_id")
    assert b.loc[0, "history_id"] == 0 and b.loc[0, "status"] == "active"  # continues (headwall +10 m, smaller)
    assert b.loc[0, "headwall_retreat_m"] == pytest.approx(10.0)  # aspect 180°: upslope is +y
    assert b.loc[1, "split_from"] == 0 and b.loc[1, "history_id"] != 0
    c = hist[hist.period == "c"]
    assert set(c.status) == {"stabilised"} and len(c) == 2
    d = hist[hist.period == "d"]
    assert list(d.status) == ["reactivated"] and d.history_id.iloc[0] == 0
