"""Run reports: a quick-look map (dDEM with RTS outlines), distributions and densities, and a Markdown summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["write_report"]


def _valid_crop(ddem: np.ndarray) -> tuple[slice, slice]:
    rows = np.flatnonzero(np.isfinite(ddem).any(axis=1))
    cols = np.flatnonzero(np.isfinite(ddem).any(axis=0))
    if not len(rows):
        return slice(0, 0), slice(0, 0)
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def _map(ax, feats, rts, *, max_px: int = 1500):
    """dDEM (coarsened to ≤ max_px) with kept RTS outlines (black) and filtered polygons (grey)."""
    import dask

    ddem = feats["ddem"]
    finite = np.isfinite(ddem.data)
    rows, cols = dask.compute(finite.any(axis=1), finite.any(axis=0))
    if rows.any():  # crop to the data first: stores cover whole grid blocks
        r, c = np.flatnonzero(rows), np.flatnonzero(cols)
        ddem = ddem.isel(y=slice(r[0], r[-1] + 1), x=slice(c[0], c[-1] + 1))
    factor = max(1, int(np.ceil(max(ddem.shape) / max_px)))
    if factor > 1:
        ddem = ddem.coarsen(y=factor, x=factor, boundary="trim").mean()
    values = ddem.values
    ys, xs = _valid_crop(values)
    values = values[ys, xs]
    x, y = ddem["x"].values[xs], ddem["y"].values[ys]
    if values.size == 0:
        ax.text(0.5, 0.5, "no valid dDEM", ha="center", transform=ax.transAxes)
        return
    res = float(abs(x[1] - x[0])) if len(x) > 1 else 10.0
    extent = (x[0] - res / 2, x[-1] + res / 2, y[-1] - res / 2, y[0] + res / 2)
    lim = float(np.nanpercentile(np.abs(values), 99)) or 1.0
    im = ax.imshow(values, extent=extent, cmap="RdBu", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, shrink=0.8, label="elevation change (m)")
    if len(rts):
        dropped = rts[~rts.kept]
        if len(dropped):
            dropped.boundary.plot(ax=ax, color="0.4", linewidth=0.6, linestyle="--")
        kept = rts[rts.kept]
        if len(kept):
            kept.boundary.plot(ax=ax, color="black", linewidth=0.9)
    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xlabel("x (m, EPSG:3413)")
    ax.set_ylabel("y (m)")


def iterations_figure(table: pd.DataFrame, path: str | Path) -> Path:
    """Plot an ``iterations.csv`` of the mapping loop (Xia et al. 2022, Table 1) to ``path`` (PNG).

    Per iteration: training polygons before it, the model's predictions, the new RTS
    the person confirmed and the candidates rejected.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    it = table["iteration"].to_numpy()
    series = [("training polygons", "training_polygons", "0.35"), ("predictions", "predictions", "tab:blue"),
              ("new RTS confirmed", "confirmed_rts", "tab:green"), ("rejected", "rejected", "tab:red")]  # fmt: skip
    fig, ax = plt.subplots(figsize=(6.5, 3.6), dpi=110)
    w = 0.8 / len(series)
    for k, (name, col, colour) in enumerate(series):
        values = pd.to_numeric(table[col], errors="coerce").to_numpy(float)
        bars = ax.bar(it + (k - (len(series) - 1) / 2) * w, np.nan_to_num(values), width=w, color=colour, label=name)
        ax.bar_label(bars, labels=["" if np.isnan(v) else f"{v:.0f}" for v in values], fontsize=7)
    ax.set_xticks(it)
    ax.set_xlabel("iteration")
    ax.set_ylabel("polygons")
    ax.set_title("iterative mapping: labels, predictions and review per iteration")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(run: str | Path, *, pair: str, iterations: str | Path | None = None) -> Path:
    """Write ``report/`` in a run directory for one pair; returns the Markdown file.

    Reads the run's outputs (features, RTS polygons, densities, summary, status
    table); this is an I/O entry point. ``iterations``: the ``iterations.csv`` of a
    mapping loop (``rtsflow labels merge``) to tabulate and plot.
    """
    import geopandas as gpd
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rtsflow.io.features import open_features

    run = Path(run)
    out = run / "report"
    out.mkdir(exist_ok=True)
    summary = json.loads((run / f"summary_{pair}.json").read_text())
    rts = gpd.read_parquet(summary["rts"])
    feats = open_features(summary["features"])
    kept = rts[rts.kept]

    fig, ax = plt.subplots(figsize=(8, 7), dpi=110)
    _map(ax, feats, rts)
    ax.set_title(f"{pair.replace('_', ' → ')}: {len(kept)} RTS (black), {len(rts) - len(kept)} filtered (grey)")
    fig.tight_layout()
    map_png = out / f"map_{pair}.png"
    fig.savefig(map_png)
    plt.close(fig)

    fig, axes = plt.subplots(1, 4, figsize=(17, 3.8), dpi=110)
    if len(kept):
        axes[0].hist(kept.area_m2 / 1e4, bins=min(30, max(5, len(kept) // 3)), color="0.3")
        axes[1].hist(kept.volume_per_year_m3, bins=min(30, max(5, len(kept) // 3)), color="tab:red")
        axes[2].errorbar(
            kept.area_m2 / 1e4,
            -kept.volume_m3,
            yerr=kept.volume_sigma_m3,
            fmt="o",
            ms=3,
            color="0.2",
            ecolor="0.6",
            elinewidth=0.8,
        )
        axes[2].set_xscale("log")
        axes[2].set_yscale("log")
    axes[0].set_xlabel("RTS area (ha)")
    axes[0].set_ylabel("count")
    axes[1].set_xlabel("volume change (m³/yr)")
    axes[2].set_xlabel("RTS area (ha)")
    axes[2].set_ylabel("volume loss ± 1σ (m³)")
    cells = sorted(run.glob(f"densities_{pair}_cells_*.parquet"))
    if cells:
        dens = gpd.read_parquet(cells[0])
        dens = dens[dens.valid_area_km2 > 0]
        if len(dens):
            dens.plot(ax=axes[3], column="volume_change_rate_m3_per_yr_km2", cmap="Reds_r", legend=True,
                      legend_kwds={"label": "m³/yr/km²", "shrink": 0.8})  # fmt: skip
        axes[3].set_title(f"volume-change density ({cells[0].stem.rsplit('_', 1)[-1]} cells)")
        axes[3].set_xticks([])
        axes[3].set_yticks([])
    else:
        axes[3].axis("off")
    for a, t in zip(axes[:3], ("areas", "volume-change rates", "volume vs area"), strict=True):
        a.set_title(t)
    fig.tight_layout()
    dist_png = out / f"distributions_{pair}.png"
    fig.savefig(dist_png)
    plt.close(fig)

    char_png = _characteristics(run, out, pair, kept)

    lines = [f"# rtsflow run report: {run.name}, pair {pair.replace('_', ' → ')}", ""]
    lines += ["| quantity | value |", "|---|---|"]
    years = summary["years"]
    rows = [
        ("RTS kept / polygons", f"{summary['n_rts']} / {summary['n_polygons']}"),
        ("RTS area", f"{summary['area_m2'] / 1e4:.2f} ha"),
        ("net volume change", f"{summary['volume_m3']:.0f} ± {summary['volume_sigma_m3']:.0f} m³ over {years:g} yr"),
        ("valid area", f"{summary['valid_area_km2']:.1f} km²"),
        ("volume-change density", f"{summary['volume_change_rate_m3_per_yr_km2']:.1f} m³/yr/km²"),
        ("RTS area density", f"{summary['area_density_m2_per_km2']:.1f} m²/km²"),
    ]
    if summary.get("volume_void_filled_m3") is not None:  # with a reference DEM (rtsflow.graph.densities)
        rows += [("land (valid and under the quality mask)", f"{summary['land_area_km2']:.1f} km²"),
                 ("void-filled volume change", f"{summary['volume_void_filled_m3']:.0f} ± "
                                               f"{summary['volume_void_filled_sigma_m3']:.0f} m³ over {years:g} yr")]
    if "carbon_kg" in summary:
        rows += [
            ("soil organic carbon mobilised",
             f"{summary['carbon_kg'] / 1e6:.3f} ± {summary['carbon_sigma_kg'] / 1e6:.3f} Gg C over {years:g} yr"),
            ("carbon mobilisation rate", f"{summary['carbon_rate_pg_per_yr']:.3g} ± "
                                         f"{summary['carbon_rate_sigma_pg_per_yr']:.2g} Pg C yr⁻¹"),
        ]  # fmt: skip
    lines += [f"| {k} | {v} |" for k, v in rows]
    sites = run / f"densities_{pair}_sites.parquet"
    if sites.exists():
        table = gpd.read_parquet(sites)
        cols = ["region", "n_rts", "valid_area_km2", "volume_change_rate_m3_per_yr_km2", "carbon_rate_pg_per_yr",
                "carbon_rate_sigma_pg_per_yr"]  # fmt: skip
        table = pd.DataFrame(table[[c for c in cols if c in table]])
        for c in ("carbon_rate_pg_per_yr", "carbon_rate_sigma_pg_per_yr"):
            if c in table:
                table[c] = table[c].map(lambda v: f"{v:.3g}")
        lines += ["", "## Per site", "", _md_table(table)]
    if "metrics" in summary:
        m = summary["metrics"]
        lines += ["", "## Accuracy against the reference", "", "| metric | pixel | detection |", "|---|---|---|"]
        for k in ("iou", "f1", "precision", "recall"):
            lines.append(f"| {k} | {m[f'pixel_{k}']:.3f} | {m[f'detection_{k}']:.3f} |")
        lines.append(f"| objects (predicted / reference) | {m['n_predicted']} | {m['n_reference']} |")
    lines += ["", f"![map](map_{pair}.png)", "", f"![distributions](distributions_{pair}.png)", ""]
    if char_png is not None:
        lines += ["## Where the RTS are", "", f"![characteristics]({char_png.name})", ""]
    if len(kept):
        cols = ["rts_id", "area_m2", "volume_m3", "volume_sigma_m3", "volume_per_year_m3", "max_abs_dh_m"]
        cols = [c for c in cols if c in kept]
        top = kept.sort_values("volume_m3").head(10)[cols]
        lines += ["## Largest volume losses", "", _md_table(top), ""]
    if (run / "rts_periods.csv").exists():
        periods = pd.read_csv(run / "rts_periods.csv")
        cols = ["period", "n_rts", "n_new", "n_grew", "n_active", "n_reactivated", "n_stabilised", "n_merged",
                "volume_per_year_m3", "volume_sigma_per_year_m3", "rate_change_m3_per_yr",
                "rate_change_sigma_m3_per_yr"]  # fmt: skip
        lines += ["## Across periods (rts_history.parquet)", "", _md_table(periods[[c for c in cols if c in periods]]),
                  ""]  # fmt: skip
    if iterations is not None:
        table = pd.read_csv(iterations)
        png = iterations_figure(table, out / "iterations.png")
        lines += ["## Iterative mapping (iterations.csv)", "", _md_table(table.drop(columns=["date_utc"],
                  errors="ignore")), "", f"![iterations]({png.name})", ""]  # fmt: skip
    from rtsflow.runs import RunDirectory

    status = RunDirectory(run).status()
    # The pair's own stages and those of its two epochs (shared with other pairs).
    keys = {pair, *pair.split("_")}
    status = status[status.key.astype(str).isin(keys)]
    counts = status.groupby(["stage", "key", "status"], sort=False).size().rename("blocks").reset_index()
    lines += ["## Blocks", "", _md_table(counts), ""]
    if (run / "timings.csv").exists():
        timings = pd.read_csv(run / "timings.csv")
        lines += ["## Timings (s)", "", _md_table(timings), ""]
    md = out / f"report_{pair}.md"
    md.write_text("\n".join(lines) + "\n")
    return md


def _characteristics(run: Path, out: Path, pair: str, kept) -> Path | None:
    """Elevation, slope, distance to water and aspect of the RTS, and per-cell density maps (area, volume, new RTS)."""
    import geopandas as gpd
    import matplotlib.pyplot as plt

    if "slope_deg" not in kept:
        return None
    fig = plt.figure(figsize=(17, 7.6), dpi=110)
    bins = min(30, max(5, len(kept) // 3))
    panels = (("elevation_m", "elevation (m)", "tab:brown"), ("slope_deg", "slope (°)", "tab:olive"),
              ("distance_to_water_m", "distance to water (m)", "tab:blue"))  # fmt: skip
    for k, (col, label, colour) in enumerate(panels):
        ax = fig.add_subplot(2, 4, k + 1)
        values = kept[col].dropna()
        if len(values):
            ax.hist(values, bins=bins, color=colour)
        if col == "distance_to_water_m":
            label += f"\n({int(kept[col].isna().sum())} RTS farther than the search radius)"
        ax.set_xlabel(label)
        ax.set_ylabel("RTS")
    ax = fig.add_subplot(2, 4, 4, projection="polar")
    ax.set_theta_zero_location("N")
    ax.set_theta_direction(-1)
    aspect = kept["aspect_deg"].dropna().to_numpy()
    edges = np.radians(np.arange(0, 361, 22.5))
    counts, _ = np.histogram(np.radians(aspect), bins=edges)
    ax.bar(edges[:-1] + np.diff(edges) / 2, counts, width=np.diff(edges), color="tab:green", edgecolor="white")
    ax.set_title("aspect (direction the slope faces, true north)", fontsize=9)
    cells = sorted(run.glob(f"densities_{pair}_cells_*.parquet"))
    dens = gpd.read_parquet(cells[0]) if cells else None
    maps = [("area_change_rate_m2_per_yr_km2", "RTS area (m²/yr/km²)", "Oranges"),
            ("volume_change_rate_m3_per_yr_km2", "volume change (m³/yr/km²)", "Reds_r")]  # fmt: skip
    history = run / "rts_history.parquet"
    if dens is not None and history.exists():
        h = gpd.read_parquet(history)
        new = h[(h.period == pair) & (h.status == "new")]
        joined = gpd.sjoin(dens[["geometry"]], gpd.GeoDataFrame(geometry=new.geometry.centroid, crs=new.crs),
                           predicate="contains")  # fmt: skip
        dens = dens.assign(new_rts=joined.groupby(level=0).size().reindex(dens.index, fill_value=0))
        maps.append(("new_rts", "RTS first active this period (count)", "Purples"))
    for k, (col, label, cmap) in enumerate(maps):
        ax = fig.add_subplot(2, 4, 5 + k)
        if dens is not None and len(dens[dens.valid_area_km2 > 0]):
            d = dens[dens.valid_area_km2 > 0]
            d.plot(ax=ax, column=col, cmap=cmap, legend=True, legend_kwds={"shrink": 0.8})
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"{pair.replace('_', ' → ')}: where the {len(kept)} RTS are")
    fig.tight_layout()
    path = out / f"characteristics_{pair}.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _md_table(df: pd.DataFrame) -> str:
    def fmt(v):
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    sep = "|" + "---|" * len(df.columns)
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, sep, *body])
