"""Many regions against one Dask client, one summary table.

Each region is a :func:`pipelines.region.run_region` run in its own run
directory (so each resumes on its own); a region that fails is reported in the
summary and does not stop the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pipelines.region import VOID_FILLED, run_region
from rtsflow.config import RunConfig

__all__ = ["run_regions"]


def run_regions(
    configs: Sequence[RunConfig], *, client, out: str | Path, force: bool = False, progress: bool = True
) -> pd.DataFrame:
    """Run every region on ``client``; write ``out/summary.csv`` and ``out/summary.md``; return the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for config in configs:
        try:
            result = run_region(config, client=client, force=force, progress=progress)
        except Exception as e:  # one region's failure is recorded, the others go on
            rows.append({"region": config.name, "run": config.output, "status": f"failed: {type(e).__name__}: {e}"})
            continue
        for pair, s in result.pairs.items():
            rows.append({
                "region": config.name, "pair": pair, "run": str(result.run), "status": "done", "n_rts": s["n_rts"],
                "valid_area_km2": s["valid_area_km2"], "area_m2": s["area_m2"], "volume_m3": s["volume_m3"],
                "volume_sigma_m3": s["volume_sigma_m3"],
                "volume_change_rate_m3_per_yr_km2": s["volume_change_rate_m3_per_yr_km2"],
                "area_density_m2_per_km2": s["area_density_m2_per_km2"],
                **{k: s.get(k) for k in VOID_FILLED},
                "detection_f1": s.get("metrics", {}).get("detection_f1"),
            })  # fmt: skip
    table = pd.DataFrame(rows)
    done = table[table.status == "done"] if len(table) else table
    if len(done):
        total = {"region": "all", "pair": "", "status": "done", "n_rts": int(done.n_rts.sum()),
                 "valid_area_km2": done.valid_area_km2.sum(), "area_m2": done.area_m2.sum(),
                 "volume_m3": done.volume_m3.sum(),
                 "volume_sigma_m3": float((done.volume_sigma_m3**2).sum() ** 0.5),
                 # NaN (min_count) where a region has no reference DEM: its land is not known.
                 "land_area_km2": done.land_area_km2.astype(float).sum(min_count=len(done)),
                 "volume_void_filled_m3": done.volume_void_filled_m3.astype(float).sum(min_count=len(done)),
                 "volume_void_filled_sigma_m3": float((done.volume_void_filled_sigma_m3.astype(float) ** 2)
                                                      .sum(min_count=len(done)) ** 0.5)}  # fmt: skip
        table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    table.to_csv(out / "summary.csv", index=False)
    from rtsflow.report import _md_table

    (out / "summary.md").write_text("# rtsflow regions\n\n" + _md_table(table.fillna("")) + "\n")
    return table
