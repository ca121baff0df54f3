"""False positives of a ``bench_generalisation.py`` root, by the hard negative they sit on.

Every kept RTS polygon of every scene under ``--root`` that touches no true slump is a false
positive; it is attributed to the generator's confounders (``region/truth/confounders.parquet``:
bank, ice, snow, gully, spoil, pit, lake) within ``--within`` metres of it, or to noise when none is.

Usage::

    python benchmarks/fp_by_kind.py --root /tmp/gen
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import geopandas as gpd


def false_positives_by_kind(scene: Path, *, within: float) -> Counter:
    """Counts of one scene's false positives per confounder kind (``"noise"``: none within reach)."""
    rts = gpd.read_parquet(next((scene / "run").glob("rts_*.parquet")))
    rts = rts[rts.kept]
    truth_path = scene / "truth.parquet"  # written by the bench for scenes with slumps
    slumps = gpd.read_parquet(truth_path).to_crs(rts.crs) if truth_path.exists() else None
    confounders = gpd.read_parquet(scene / "region" / "truth" / "confounders.parquet").to_crs(rts.crs)
    out = Counter()
    for geom in rts.geometry:
        if slumps is not None and slumps.intersects(geom).any():
            continue
        near = confounders[confounders.distance(geom) < within]
        out[",".join(sorted(set(near.kind))) or "noise"] += 1
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--within", type=float, default=30.0, help="metres from a polygon to a confounder")
    args = ap.parse_args()
    total = Counter()
    for scene in sorted(p for p in args.root.iterdir() if (p / "run").is_dir() and (p / "region").is_dir()):
        if not list((scene / "run").glob("rts_*.parquet")):
            continue
        counts = false_positives_by_kind(scene, within=args.within)
        total.update(counts)
        print(f"{scene.name:28s} {dict(counts)}")
    print(f"all scenes: {dict(total)} (n = {sum(total.values())})")


if __name__ == "__main__":
    main()
