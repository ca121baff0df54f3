"""Iterative mapping with a person in the loop (Xia et al. 2022): candidates out, decisions back in.

1. :func:`export_candidates`: a run's RTS that are not in the current label set
   become ``candidates.gpkg`` (one polygon each, an empty ``label`` field) with a
   quick-look chip per candidate (dDEM, slope, the before and after composites,
   outline drawn) in ``chips/``; open both in QGIS.
2. The person sets ``label`` to ``RTS``, ``not RTS`` or ``unsure``.
3. :func:`merge_labels`: confirmed RTS join the labels as positives
   (``label = 1``), rejected ones as negatives (``label = 0``, which training
   draws as hard negatives), unsure and unreviewed ones are left out; one row is
   added to ``iterations.csv`` (Xia et al.'s Table 1: training polygons,
   predictions, new RTS confirmed and rejected per iteration), plotted beside it
   (``iterations.png``; ``rtsflow report RUN --iterations`` puts both in the report).
4. ``rtsflow train`` on the new labels (continuing from the previous model) and
   ``rtsflow run`` again.

This module reads and writes files (an I/O entry point); no Dask.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

__all__ = ["DECISIONS", "LabelError", "export_candidates", "merge_labels"]

DECISIONS = {"RTS": 1, "not RTS": 0, "unsure": None}
ITERATION_COLUMNS = ["iteration", "date_utc", "training_polygons", "predictions", "candidates", "confirmed_rts",
                     "rejected", "unsure", "unreviewed", "training_polygons_after", "negatives_after"]  # fmt: skip


class LabelError(ValueError):
    """A label or candidate file that cannot be used; the message names the file, row and field."""


def _read(path: Path) -> gpd.GeoDataFrame:
    if not path.exists():
        raise LabelError(f"{path}: does not exist")
    gdf = gpd.read_parquet(path) if path.suffix.lower() == ".parquet" else gpd.read_file(path)
    if gdf.crs is None:
        raise LabelError(f"{path}: has no CRS; label polygons must declare their CRS")
    return gdf


def _positives(labels: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    return labels[labels["label"] == 1] if "label" in labels else labels


def export_candidates(run: str | Path, *, pair: str, labels: str | Path | None, out: str | Path,
                      margin_px: int = 20, max_candidates: int | None = None) -> gpd.GeoDataFrame:  # fmt: skip
    """Write the run's kept RTS of ``pair`` that no label polygon covers to ``out/candidates.gpkg`` + chips.

    A detection touching a labelled polygon (an RTS, or a negative already rejected) is not new and is left out.
    Candidates come largest volume loss first; ``max_candidates`` keeps that many (a review session's worth;
    the rest come back next time, as they are still not in the labels). Returns the candidates.
    """
    run, out = Path(run), Path(out)
    rts_path = run / f"rts_{pair}.parquet"
    if not rts_path.exists():
        raise LabelError(f"{rts_path}: no RTS table for pair {pair!r} in run {run}")
    rts = gpd.read_parquet(rts_path)
    kept = rts[rts.kept].reset_index(drop=True)
    known = _read(Path(labels)).to_crs(kept.crs) if labels else None
    new = np.ones(len(kept), bool)
    if known is not None and len(known) and len(kept):
        hit, _ = known.sindex.query(kept.geometry.values, predicate="intersects")
        new[np.unique(hit)] = False
    cand = kept[new].sort_values("volume_m3", kind="stable").reset_index(drop=True)
    if max_candidates is not None:
        if max_candidates < 1:
            raise LabelError(f"max_candidates must be at least 1, got {max_candidates}")
        cand = cand.head(max_candidates)
    out.mkdir(parents=True, exist_ok=True)
    (out / "chips").mkdir(exist_ok=True)
    cand = gpd.GeoDataFrame({
        "candidate_id": np.arange(len(cand), dtype=np.int64),
        "pair": pair,
        "rts_id": cand["rts_id"].astype(np.int64),
        "area_m2": cand["area_m2"],
        "volume_m3": cand["volume_m3"],
        "volume_sigma_m3": cand["volume_sigma_m3"],
        "max_abs_dh_m": cand["max_abs_dh_m"],
        "chip": [f"chips/{pair}_{i}.png" for i in range(len(cand))],
        "label": "",
        "note": "",
    }, geometry=cand.geometry.values, crs=kept.crs)  # fmt: skip
    _write_chips(run, pair, cand, out, margin_px=margin_px)
    path = out / "candidates.gpkg"
    tmp = out / ".candidates.tmp.gpkg"
    tmp.unlink(missing_ok=True)
    cand.to_file(tmp, layer="candidates", driver="GPKG")
    tmp.replace(path)
    record = {"run": str(run.resolve()), "pair": pair, "labels": str(Path(labels).resolve()) if labels else None,
              "predictions": len(kept), "new_detections": int(new.sum()), "candidates": len(cand),
              "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
              "decisions": {"label": list(DECISIONS)}}  # fmt: skip
    (out / "candidates.json").write_text(json.dumps(record, indent=2) + "\n")
    return cand


def _write_chips(run: Path, pair: str, cand: gpd.GeoDataFrame, out: Path, *, margin_px: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtsflow.io.features import open_features
    from rtsflow.io.repo import zarr_store

    feats = open_features(run / f"features_{pair}.zarr")
    import xarray as xr

    before, after = pair.split("_")
    comps = {}
    for e in (before, after):
        p = run / f"composite_{e}.zarr"
        if p.exists():
            comps[e] = xr.open_zarr(zarr_store(p), consolidated=False)["dem"]
    res = float(abs(feats.x[1] - feats.x[0]))
    for row in cand.itertuples():
        x0, y0, x1, y1 = row.geometry.bounds
        m = margin_px * res
        sel = {"x": slice(x0 - m, x1 + m), "y": slice(y1 + m, y0 - m)}
        panels = [("dDEM (m)", feats["ddem"].sel(sel), "RdBu"), ("slope (°)", feats["slope"].sel(sel), "viridis")]
        panels += [(f"composite {e}", comps[e].sel(sel), "terrain") for e in (before, after) if e in comps]
        # Before and after share one colour scale, so the lowered ground shows.
        zs = [p[1].values for p in panels[2:] if np.isfinite(p[1].values).any()]
        z_lim = (min(np.nanmin(z) for z in zs), max(np.nanmax(z) for z in zs)) if zs else (None, None)
        fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.2), dpi=80)
        for ax, (title, da_, cmap) in zip(np.atleast_1d(axes), panels, strict=True):
            v = da_.values
            ext = (float(da_.x[0]) - res / 2, float(da_.x[-1]) + res / 2, float(da_.y[-1]) - res / 2,
                   float(da_.y[0]) + res / 2)  # fmt: skip
            if title.startswith("dDEM"):
                lim = float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else 1.0
                ax.imshow(v, extent=ext, cmap=cmap, vmin=-lim, vmax=lim)
            elif title.startswith("composite"):
                ax.imshow(v, extent=ext, cmap=cmap, vmin=z_lim[0], vmax=z_lim[1])
            else:
                ax.imshow(v, extent=ext, cmap=cmap)
            gpd.GeoSeries([row.geometry]).boundary.plot(ax=ax, color="black", linewidth=1)
            ax.set_title(title, fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_xlabel("")
            ax.set_ylabel("")
        fig.suptitle(f"candidate {row.candidate_id}: {row.area_m2:.0f} m², {row.volume_m3:.0f} m³", fontsize=9)
        fig.tight_layout()
        fig.savefig(out / row.chip)
        plt.close(fig)


def merge_labels(candidates: str | Path, *, labels: str | Path | None, out: str | Path,
                 iterations: str | Path | None = None) -> pd.DataFrame:  # fmt: skip
    """Add the person's decisions to the labels; write ``out`` and append a row to ``iterations``.

    Returns the new iteration row. Raises :class:`LabelError` naming the candidate and the value when a
    ``label`` is not one of ``RTS``, ``not RTS``, ``unsure`` (or empty: not reviewed yet). Nothing is
    written unless every decision is valid.
    """
    candidates, out = Path(candidates), Path(out)
    cand = _read(candidates)
    record_path = candidates.with_name("candidates.json")
    record = json.loads(record_path.read_text()) if record_path.exists() else {}
    decision = cand["label"].fillna("").astype(str).str.strip()
    bad = ~decision.isin([*DECISIONS, ""])
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise LabelError(f"{candidates}: candidate {int(cand.candidate_id.iloc[i])}: label {decision.iloc[i]!r} is "
                         f"not one of {list(DECISIONS)} (or empty: not reviewed)")  # fmt: skip
    old = _read(Path(labels)) if labels else gpd.GeoDataFrame({"label": []}, geometry=[], crs=cand.crs)
    old = old.to_crs(cand.crs)
    if "label" not in old:
        old = old.assign(label=1)  # an inventory: every polygon is an RTS
    log = Path(iterations) if iterations else out.with_name("iterations.csv")
    previous = pd.read_csv(log) if log.exists() else pd.DataFrame(columns=ITERATION_COLUMNS)
    iteration = int(previous.iteration.max()) + 1 if len(previous) else 1
    confirmed = cand[decision == "RTS"]
    rejected = cand[decision == "not RTS"]
    added = pd.concat([confirmed.assign(label=1), rejected.assign(label=0)], ignore_index=True)
    added = added[["geometry", "label", "pair", "rts_id"]].assign(source=f"iteration {iteration}")
    merged = gpd.GeoDataFrame(pd.concat([old, added], ignore_index=True), geometry="geometry", crs=cand.crs)
    merged["label"] = merged["label"].astype(np.int64)
    row = {"iteration": iteration, "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
           "training_polygons": int((old.label == 1).sum()), "predictions": record.get("predictions", np.nan),
           "candidates": len(cand), "confirmed_rts": len(confirmed), "rejected": len(rejected),
           "unsure": int((decision == "unsure").sum()), "unreviewed": int((decision == "").sum()),
           "training_polygons_after": int((merged.label == 1).sum()),
           "negatives_after": int((merged.label == 0).sum())}  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    tmp.unlink(missing_ok=True)
    if out.suffix.lower() == ".parquet":
        merged.to_parquet(tmp)
    else:
        merged.to_file(tmp, driver="GPKG", layer="labels")
    tmp.replace(out)
    table = pd.concat([previous, pd.DataFrame([row])], ignore_index=True)[ITERATION_COLUMNS]
    table.to_csv(log, index=False)
    from rtsflow.report import iterations_figure

    iterations_figure(table, log.with_suffix(".png"))
    return pd.DataFrame([row])
