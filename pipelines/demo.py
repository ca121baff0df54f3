"""The main job on the embedded default: synthetic region → observation cube → pair features.

Later stages (features, inference, polygons, evaluation, report) extend this
same pipeline as they land.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import zarr

from pipelines.summaries import features_summary
from rtsflow.cluster import connect
from rtsflow.graph.features import pair_features
from rtsflow.ingest import ingest, ingest_mask, ingest_reference_dem
from rtsflow.io.cube import cube_info, open_cube
from rtsflow.io.features import open_features, write_features
from rtsflow.summary import cube_summary
from rtsflow.synth.generator import SynthConfig, SynthRegion, synthesize

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    out: Path
    region: SynthRegion
    cube: Path
    features: Path
    summary: str


def _region(out: Path, config: SynthConfig, *, force: bool) -> SynthRegion:
    """Generate the synthetic region unless an identical one is already on disk."""
    manifest = out / "region.json"
    if manifest.exists() and not force:
        doc = json.loads(manifest.read_text())
        if doc.get("config") == json.loads(json.dumps(asdict(config))):
            return SynthRegion.load(out)
    return synthesize(out, config=config)


def run_demo(
    *,
    out: str | Path = "demo_output",
    seed: int = 0,
    size_km: float = 5.0,
    cluster: str = "local",
    force: bool = False,
) -> DemoResult:
    """Run the demo end to end and print what it did.

    Parameters
    ----------
    out
        Output directory (region, cube).
    seed, size_km
        The synthetic region (square, ``size_km`` on a side).
    cluster
        ``"local"`` (embedded LocalCluster) or a scheduler address.
    force
        Regenerate the region and rebuild the cube.
    """
    out = Path(out)
    t0 = time.perf_counter()
    config = SynthConfig(seed=seed, size_km=(size_km, size_km))
    region = _region(out / "region", config, force=force)
    print(
        f"[{time.perf_counter() - t0:6.1f} s] synthetic region: {out / 'region'} "
        f"({size_km:g} x {size_km:g} km, {len(region.products)} products, {region.n_slumps} slumps)",
        flush=True,
    )
    cube = out / "cube.zarr"
    if force and cube.exists():
        import shutil

        shutil.rmtree(cube)
    earlier, later = config.winters[0], config.winters[-1]
    features_path = out / f"features_{earlier}_{later}.zarr"
    with connect(cluster):
        report = ingest(region.products, cube=cube)
        print(
            f"[{time.perf_counter() - t0:6.1f} s] ingest: {len(report.added)} added, "
            f"{len(report.skipped)} already present, {report.blocks_written} block writes",
            flush=True,
        )
        present = zarr.open_group(str(cube), mode="r")
        if "water" not in present:
            # Stand-in for a real water-mask product (e.g. a surface-water map).
            ingest_mask(region.truth_rasters["water"], cube=cube, name="water")
        if "reference_dem" not in present:
            ingest_reference_dem(region.truth_rasters["reference_dem"], cube=cube)
        ds = open_cube(cube)
        summary = cube_summary(ds, path=cube)
        print(summary, flush=True)
        if force or report.added or not features_path.exists():
            grid = cube_info(cube).grid
            feats, selection = pair_features(ds, grid=grid, earlier=earlier, later=later, water=ds["water"],
                                             reference=ds["reference_dem"])  # fmt: skip
            write_features(feats, features_path, grid=grid, selection=selection, overwrite=True)
    print(f"[{time.perf_counter() - t0:6.1f} s] features {earlier}→{later}: {features_path}", flush=True)
    print(features_summary(open_features(features_path)), flush=True)
    print(f"[{time.perf_counter() - t0:6.1f} s] done; outputs in {out.resolve()}", flush=True)
    return DemoResult(out=out, region=region, cube=cube, features=features_path, summary=summary)
