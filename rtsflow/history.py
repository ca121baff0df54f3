"""RTS histories across periods: who is who from one period to the next, what each did, and period totals.

Identity rule (documented for users in README "Periods and histories")
----------------------------------------------------------------------
Periods are ordered by their end (then start). Every RTS of a period is
compared with the *last known outline* of every history seen in earlier
periods; they are linked when their intersection covers at least
``min_overlap`` of the smaller of the two.

- No link: a **new** history (``initiated_after`` = end of the previous period,
  ``initiated_by`` = end of this one; in the first period the start is unknown).
- Several RTS of this period linked to one history (a **split**): the one with
  the largest intersection continues it; the others start histories with
  ``split_from`` set and the parent's initiation bracket.
- One RTS linked to several histories (a **merge**): it continues the history
  with the largest intersection; the others end with status ``merged`` and
  ``merged_into``.
- A history with no RTS in a period is **stabilised** there (its last outline
  is kept, area and volume are NaN); found again later it is **reactivated**.
- A continuing history **grew** when its headwall retreated by at least
  ``min_retreat_m`` or its area grew by at least ``grew_ratio``; otherwise
  it is **active**.

Headwall retreat: the distance the upslope edge moved, along the upslope
direction of the earlier outline (opposite its ``aspect_grid_deg``, the
direction the pre-disturbance slope faces): max over the new outline of
x·u minus the same over the old one. Negative values mean the upslope edge
is lower than before (e.g. a partly detected slump).

Period totals sum the RTS of each period (volume σ added in quadrature:
RTS errors independent); the change between consecutive periods' yearly
rates has σ = √(σ₁² + σ₂²), which assumes independent periods — periods
sharing an epoch have anti-correlated errors through that epoch's
composite, which this does not model.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

__all__ = ["STATUSES", "HistoryRules", "Period", "headwall_retreat", "link_periods", "period_totals"]

STATUSES = ("new", "active", "grew", "reactivated", "stabilised", "merged")


@dataclass(frozen=True)
class HistoryRules:
    """Thresholds of the identity and status rules (see the module docstring)."""

    min_overlap: float = 0.1
    min_retreat_m: float = 20.0
    grew_ratio: float = 1.2


@dataclass(frozen=True)
class Period:
    """One period's RTS (kept polygons of one pair) and its epochs."""

    key: str
    start: int
    end: int
    rts: gpd.GeoDataFrame


def headwall_retreat(old: shapely.Geometry, new: shapely.Geometry, *, aspect_grid_deg: float) -> float:
    """How far (m) the upslope edge moved from ``old`` to ``new``, along the upslope direction of ``old``."""
    if not np.isfinite(aspect_grid_deg):
        return float("nan")
    a = np.radians(aspect_grid_deg)
    up = -np.array([np.sin(a), np.cos(a)])  # aspect: the direction the slope faces (downhill)

    def reach(g):
        xy = shapely.get_coordinates(g)
        return float((xy @ up).max())

    return reach(new) - reach(old)


def _area(g) -> float:
    return float(shapely.area(g))


def link_periods(periods: Sequence[Period], *, rules: HistoryRules = HistoryRules()) -> gpd.GeoDataFrame:
    """The ``rts_history`` table: one row per history and period from its first detection on.

    Columns: ``history_id``, ``period``, ``period_start``, ``period_end``, ``status``, ``rts_id``
    (the period's RTS, ``-1`` if none), ``area_m2``, ``volume_m3``, ``volume_sigma_m3`` (and
    ``carbon_kg`` ± σ when the RTS have them), ``area_change_m2``, ``headwall_retreat_m``,
    ``first_period``, ``initiated_after`` (NaN: before the first period), ``initiated_by``,
    ``merged_into``, ``split_from`` (-1: none), geometry (the period's outline, or the last known one).
    """
    periods = sorted(periods, key=lambda p: (p.end, p.start))
    crs = periods[0].rts.crs if periods else None
    last: dict[int, dict] = {}  # history id -> last known state
    rows: list[dict] = []
    next_id = 0
    prev_end = None
    for period in periods:
        rts = period.rts.reset_index(drop=True)
        ids = list(last)
        geoms = [last[h]["geometry"] for h in ids]
        inter = {}  # (j, h) -> intersection area
        if ids and len(rts):
            tree = shapely.STRtree(geoms)
            js, ks = tree.query(rts.geometry.values, predicate="intersects")
            for j, k in zip(js, ks, strict=True):
                g_new, g_old = rts.geometry.iloc[j], geoms[k]
                a = _area(shapely.intersection(g_new, g_old))
                if a >= rules.min_overlap * min(_area(g_new), _area(g_old)):
                    inter[(int(j), ids[k])] = a
        # Each RTS continues its best history; each history is continued by its best RTS.
        best_h = {}
        for (j, h), a in inter.items():
            if j not in best_h or a > inter[(j, best_h[j])]:
                best_h[j] = h
        best_j = {}
        for (j, h), a in inter.items():
            if best_h[j] == h and (h not in best_j or a > inter[(best_j[h], h)]):
                best_j[h] = j
        seen, hist_of = set(), {}
        for j in range(len(rts)):
            r = rts.iloc[j]
            h = best_h.get(j)
            row = {"period": period.key, "period_start": period.start, "period_end": period.end,
                   "rts_id": int(r["rts_id"]) if "rts_id" in r else j, "geometry": r.geometry,
                   "area_m2": float(r.area_m2), "volume_m3": float(r.volume_m3),
                   "volume_sigma_m3": float(r.volume_sigma_m3), "merged_into": -1, "split_from": -1,
                   "_aspect": float(r.get("aspect_grid_deg", np.nan))}  # fmt: skip
            for c in ("carbon_kg", "carbon_sigma_kg"):
                if c in r:
                    row[c] = float(r[c])
            if h is not None and best_j[h] == j:  # continues history h
                old = last[h]
                retreat = headwall_retreat(old["geometry"], r.geometry, aspect_grid_deg=old["aspect"])
                grew = retreat >= rules.min_retreat_m or row["area_m2"] >= rules.grew_ratio * old["area_m2"]
                status = "reactivated" if old["status"] == "stabilised" else "grew" if grew else "active"
                row |= {"history_id": h, "status": status, "headwall_retreat_m": retreat,
                        "area_change_m2": row["area_m2"] - old["area_m2"], "first_period": old["first_period"],
                        "initiated_after": old["initiated_after"], "initiated_by": old["initiated_by"]}  # fmt: skip
                seen.add(h)
            else:
                parent = last.get(h) if h is not None else None  # a split-off piece of history h
                row |= {"history_id": next_id, "status": "active" if parent else "new",
                        "headwall_retreat_m": np.nan, "area_change_m2": np.nan,
                        "first_period": parent["first_period"] if parent else period.key,
                        "initiated_after": parent["initiated_after"] if parent else
                        (np.nan if prev_end is None else float(prev_end)),
                        "initiated_by": parent["initiated_by"] if parent else float(period.end),
                        "split_from": h if parent else -1}  # fmt: skip
                next_id += 1
            hist_of[j] = row["history_id"]
            rows.append(row)
        for h in ids:
            if h in seen:
                continue
            old = last[h]
            merged = [hist_of[j] for (j, hh) in inter if hh == h]
            if merged:
                status, into = "merged", merged[0]
            elif old["status"] in ("stabilised", "merged"):
                continue  # reported once; kept as a candidate for reactivation
            else:
                status, into = "stabilised", -1
            rows.append({"history_id": h, "period": period.key, "period_start": period.start,
                         "period_end": period.end, "status": status, "rts_id": -1, "geometry": old["geometry"],
                         "area_m2": np.nan, "volume_m3": np.nan, "volume_sigma_m3": np.nan,
                         "headwall_retreat_m": np.nan, "area_change_m2": np.nan, "merged_into": into,
                         "split_from": -1, "first_period": old["first_period"],
                         "initiated_after": old["initiated_after"], "initiated_by": old["initiated_by"]})  # fmt: skip
        for row in rows:
            if row["period"] != period.key:
                continue
            h = row["history_id"]
            if row["status"] == "merged":
                last.pop(h, None)  # absorbed: its ground now belongs to the history it merged into
                continue
            prev = last.get(h, {})
            detected = row["rts_id"] >= 0
            last[h] = {"geometry": row["geometry"], "status": row["status"],
                       "area_m2": row["area_m2"] if detected else prev.get("area_m2", np.nan),
                       "aspect": row.get("_aspect", np.nan) if detected else prev.get("aspect", np.nan),
                       "first_period": row["first_period"], "initiated_after": row["initiated_after"],
                       "initiated_by": row["initiated_by"]}  # fmt: skip
        prev_end = period.end
    columns = ["history_id", "period", "period_start", "period_end", "status", "rts_id", "area_m2", "volume_m3",
               "volume_sigma_m3", "carbon_kg", "carbon_sigma_kg", "area_change_m2", "headwall_retreat_m",
               "first_period", "initiated_after", "initiated_by", "merged_into", "split_from", "geometry"]  # fmt: skip
    table = pd.DataFrame(rows)
    table = table[[c for c in columns if c in table]] if len(table) else pd.DataFrame(columns=columns)
    for c in ("history_id", "rts_id", "merged_into", "split_from", "period_start", "period_end"):
        table[c] = table[c].astype(np.int64)
    table = table.sort_values(["history_id", "period_end", "period_start"], kind="stable").reset_index(drop=True)
    return gpd.GeoDataFrame(table, geometry="geometry", crs=crs)


def period_totals(history: pd.DataFrame, *, years: dict[str, float] | None = None) -> pd.DataFrame:
    """Per period: RTS counts by status, area, volume change ± σ and its yearly rate, change from the previous period.

    ``years``: length of each period (default: ``period_end - period_start``).
    """
    out = []
    for key, g in history.groupby("period", sort=False):
        start, end = int(g.period_start.iloc[0]), int(g.period_end.iloc[0])
        yrs = (years or {}).get(key, float(end - start))
        det = g[g.rts_id >= 0]
        row = {"period": key, "period_start": start, "period_end": end, "years": yrs, "n_rts": len(det)}
        for s in STATUSES:
            row[f"n_{s}"] = int((g.status == s).sum())
        row["area_m2"] = float(det.area_m2.sum())
        row["volume_m3"] = float(det.volume_m3.sum())
        row["volume_sigma_m3"] = float(np.sqrt((det.volume_sigma_m3**2).sum()))
        row["volume_per_year_m3"] = row["volume_m3"] / yrs
        row["volume_sigma_per_year_m3"] = row["volume_sigma_m3"] / yrs
        if "carbon_kg" in det:
            row["carbon_kg"] = float(det.carbon_kg.sum())
        out.append(row)
    table = pd.DataFrame(out).sort_values(["period_end", "period_start"], kind="stable").reset_index(drop=True)
    if len(table):
        rate, sig = table.volume_per_year_m3.to_numpy(), table.volume_sigma_per_year_m3.to_numpy()
        table["rate_change_m3_per_yr"] = np.concatenate([[np.nan], np.diff(rate)])
        table["rate_change_sigma_m3_per_yr"] = np.concatenate([[np.nan], np.hypot(sig[1:], sig[:-1])])
    return table
