"""Realistic synthetic scenes: every realism switch of ``rtsflow.synth`` on, on real or analytic terrain.

Shared by the default model's training recipe (``pipelines.demo``) and the
generalisation benchmark (``benchmarks/bench_generalisation.py``), so that both
draw their scenes from one definition. Real terrain and RTS outlines come from
``../shared/data`` beside the repository (see its README for the sources).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from rtsflow.synth.generator import SynthConfig

__all__ = ["DATA", "OUTLINES", "PART_GAP_KM", "TERRAINS", "WINTER_COHERENCE", "bench_scene_seed", "randomised",
           "realistic", "terrain_path", "terrain_window"]  # fmt: skip

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: Terrain name → DEM (None: the analytic generator).
TERRAINS: dict[str, Path | None] = {
    "analytic": None,
    "longyearbyen": DATA / "longyearbyen" / "DEM_1995.tif",  # Svalbard, Norwegian Polar Institute
    "st_helens": DATA / "mount_st_helens" / "2.tif",  # Mount St Helens 2000 crater DEM
}
# TanDEM-X is bistatic: winter coherence is high. 0.97 gives a median dDEM σ over slumps of 0.80 m on the analytic
# terrain (1.16 m on Longyearbyen's steeper slopes); the Maier et al. Ellesmere reference RTS: 0.62 m (p10–p90
# 0.35–1.03 m). The scenes before 2026-12-03 13:00 used 0.8 (1.7 m): 2.8× the real error.
WINTER_COHERENCE = 0.97
#: Real RTS outlines the slumps are drawn from (Maier Ellesmere + ARTS Taymyr TP2).
OUTLINES = (DATA / "maier2025_ellesmere" / "reference_postprocessed.geojson",
            DATA / "arts_bernhard2022" / "taymyr" / "SHP_RTS_TP2.shp")  # fmt: skip


def terrain_path(terrain: str) -> Path | None:
    """The DEM of a named terrain (``None`` for the analytic one); a clear error when it is missing."""
    if terrain not in TERRAINS:
        raise ValueError(f"terrain must be one of {list(TERRAINS)}, got {terrain!r}")
    path = TERRAINS[terrain]
    if path is not None and not path.exists():
        raise FileNotFoundError(f"terrain {terrain!r}: {path} is missing (../shared/data beside the repository)")
    return path


#: Gap (km) between the footprints of the two parts of a real DEM (:func:`terrain_window`).
PART_GAP_KM = 1.0


def _dem_extent_km(path: Path) -> tuple[float, float]:
    """(width, height) of a DEM in km (a metric CRS: the terrains of :data:`TERRAINS`)."""
    import rasterio

    with rasterio.open(path) as src:
        if not src.crs.is_projected:
            raise ValueError(f"terrain DEM {path}: parts need a metric CRS, got {src.crs}")
        factor = src.crs.linear_units_factor[1]
        return src.width * abs(src.res[0]) * factor / 1000.0, src.height * abs(src.res[1]) * factor / 1000.0


def terrain_window(*, terrain: str, part: str | None, size_km: float, seed: int) -> dict:
    """Where on its terrain's DEM a region lies (:class:`SynthConfig` fields ``terrain_*``), drawn from ``seed``.

    A DEM at least two regions wide (plus :data:`PART_GAP_KM`) is split at its centre line:
    ``part="bench"`` puts regions on its east part, ``"train"`` on its west part, each region
    wholly on the DEM and the two parts' footprints :data:`PART_GAP_KM` apart, so the
    benchmark's scenes share no ground with the training regions (Longyearbyen: 26.6 × 19.7 km).
    Training regions are also mirrored and turned by random quarter turns (domain
    randomisation: a hillside turned is still a hillside); benchmark scenes lie as the DEM does.
    A smaller DEM (St Helens' crater, 3.0 × 4.4 km) fills every region with itself and its
    mirror images: ``"bench"`` keeps it as it lies at the centre (as every scene before
    2026-12-05 16:00 UTC did), ``"train"`` only mirrors and turns it. ``part=None`` or the
    analytic terrain: no fields (the DEM's centre as it lies).
    """
    import numpy as np

    if part not in (None, "bench", "train"):
        raise ValueError(f"part must be None, 'bench' or 'train', got {part!r}")
    path = terrain_path(terrain)
    if part is None or path is None:
        return {}
    rng = np.random.default_rng((seed, 3413))
    width, height = _dem_extent_km(path)
    out = {}
    lo, hi = PART_GAP_KM / 2.0 + size_km / 2.0, width / 2.0 - size_km / 2.0
    if lo <= hi and height >= size_km:  # room for a part on each side
        x = float(rng.uniform(lo, hi))
        y = float(rng.uniform(-(height - size_km) / 2.0, (height - size_km) / 2.0))
        out["terrain_offset_km"] = (round(x if part == "bench" else -x, 3), round(y, 3))
    if part == "train":
        out["terrain_turns"] = int(rng.integers(4))
        out["terrain_flip"] = bool(rng.random() < 0.5)
    return out


def realistic(
    *,
    seed: int,
    size_km: float,
    terrain: str,
    slumps: bool = True,
    slump_slopes: str = "arts",
    terrain_part: str | None = None,
) -> SynthConfig:
    """A SynthConfig with every realism switch on (values: rtsflow.synth.errors / confounders docstrings).

    ``slumps=False`` gives an RTS-free scene with three times the hard negatives.
    ``slump_slopes``: ``"arts"`` puts slumps on the slopes of the ARTS inventory's RTS
    (median 7.9°), ``"any"`` on whatever 0.5–30° slope the terrain has at a random point
    (the scenes before 2026-12-05 07:30 UTC and the shipped model's training regions).
    ``terrain_part``: the part of a real DEM the scene lies on (:func:`terrain_window`;
    ``None``: its centre, as the scenes and training regions before 2026-12-05 16:00 UTC).
    """
    for p in OUTLINES:
        if not p.exists():
            raise FileNotFoundError(f"RTS outlines: {p} is missing (../shared/data beside the repository)")
    path = terrain_path(terrain)
    return SynthConfig(
        seed=seed,
        size_km=(size_km, size_km),
        winters=(2010, 2016),
        ramp_m_per_km=0.05,
        undulation_rms_m=0.5,
        noise_correlation_px=2.0,
        blunders_per_100km2=20.0,
        terrain=str(path) if path else None,
        outlines=tuple(str(p) for p in OUTLINES),
        hard_negatives_per_km2=1.0 if slumps else 3.0,
        slump_density=1.5 if slumps else 0.0,
        winter_coherence=WINTER_COHERENCE,
        slump_slopes=slump_slopes,
        **terrain_window(terrain=terrain, part=terrain_part, size_km=size_km, seed=seed),
    )


def randomised(
    *,
    seed: int,
    size_km: float,
    terrain: str,
    slumps: bool = True,
    slump_slopes: str = "arts",
    terrain_part: str | None = None,
) -> SynthConfig:
    """A training region with its realism drawn at random (domain randomisation, issue #12 part 2).

    Ranges bracket :func:`realistic`: DEM-noise correlation 1–3 px, 0–40 unwrapping
    blunders per 100 km², ramps 0.01–0.1 m/km, undulations 0.1–1 m, misregistration
    up to 1–4 px, 0.5–3 hard negatives and 1–2.5 slump sites per km², 3- or 6-year
    periods, winter coherence 0.85–0.98 (dDEM σ over slumps ~0.8–1.4 m).
    ``slumps=False``: no slumps and 3 hard negatives per km² (an RTS-free region).
    ``terrain_part``: as :func:`realistic` (training regions: ``"train"``).
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    config = dataclasses.replace(
        realistic(seed=seed, size_km=size_km, terrain=terrain, slump_slopes=slump_slopes, terrain_part=terrain_part),
        winters=(2010, 2013) if rng.random() < 0.3 else (2010, 2016),
        noise_correlation_px=float(rng.uniform(1.0, 3.0)),
        blunders_per_100km2=float(rng.uniform(0.0, 40.0)),
        ramp_m_per_km=float(rng.uniform(0.01, 0.1)),
        undulation_rms_m=float(rng.uniform(0.1, 1.0)),
        max_shift_px=float(rng.uniform(1.0, 4.0)),
        hard_negatives_per_km2=float(rng.uniform(0.5, 3.0)),
        slump_density=float(rng.uniform(1.0, 2.5)),
        winter_coherence=float(rng.uniform(0.85, 0.98)),
    )
    if not slumps:
        config = dataclasses.replace(config, slump_density=0.0, hard_negatives_per_km2=3.0)
    return config


def bench_scene_seed(seed: int, *, t: int, k: int, slumps: bool) -> int:
    """The synthesis seed of the generalisation benchmark's scene ``k`` of terrain index ``t``: sets of three.

    Set ``j = k // 3`` starts ``600 j`` past ``seed``; within it scene ``i = k % 3`` has ``seed + t + 3i``
    (RTS-free: 10 more), so no two scenes of a run share a seed (nor, for the default seed 100, a
    training region of ``pipelines.demo``: 1 000 and 3 000 up) and the first three are the scenes the
    three-scene benchmark ran before 2026-12-06.
    """
    j, i = divmod(k, 3)
    return seed + 600 * j + (0 if slumps else 10) + t + 3 * i
