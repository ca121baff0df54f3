"""Write a synthetic region to disk: products in the user format plus ground truth.

The region is generated window by window (windows aligned to a fixed global
lattice of the grid), so memory stays bounded whatever the region size, and a
pixel's values depend only on the seed and its position.

Output layout::

    OUT/
      region.json                      what was generated (config, window, files)
      products/<id>.json               sidecars (rtsflow product format)
      products/<id>_<layer>.tif        dem, coherence, layover_shadow, incidence
      truth/slumps.parquet             one row per slump and epoch pair it changed in
      truth/confounders.parquet        pits and lakes (with level changes)
      truth/dh_<w0>_<w1>.tif           slump-only elevation change per epoch pair
      truth/rts_mask_<w0>_<w1>.tif     1 = slump active in that pair (training label)
      truth/water.tif                  1 = lake
      reference_dem.tif                noise-free first-epoch surface (an external reference DEM)
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path

import geopandas as gpd
import numpy as np
import rasterio
import shapely
from pyproj import Transformer
from rasterio.windows import Window as RioWindow

from rtsflow import __version__
from rtsflow.grid import GRID_CRS, Grid, Window
from rtsflow.kernels import gdal
from rtsflow.products import write_sidecar
from rtsflow.synth.errors import BLUNDER_CELL, blunder_offsets, correlated_noise, halo_px
from rtsflow.synth.fields import rng_for
from rtsflow.synth.observations import Observation, render_observation, schedule
from rtsflow.synth.scene import Scene, Slump

__all__ = ["SynthConfig", "SynthRegion", "synthesize"]

#: Default generation window (px); windows are aligned to a global lattice of this size.
GEN_WINDOW = 2048
#: Noise is drawn per cell of this global lattice (px), independent of the generation window.
NOISE_CELL = 512
_LAYERS = ("dem", "coherence", "layover_shadow", "incidence")


@dataclass(frozen=True)
class SynthConfig:
    """What to generate.

    Parameters
    ----------
    seed
        Determines everything.
    center_lonlat
        Region centre (default: Banks Island, 72.9°N, where EPSG:3413's scale ≈ 1).
    size_km
        Region width and height in km.
    resolution
        Pixel size (m) of the products (on the rtsflow grid).
    winters
        Epochs: winters labelled by the year they start.
    obs_per_winter
        Winter acquisitions per winter; one summer acquisition is added per
        winter when ``summer`` is true.
    max_shift_px
        Largest horizontal misregistration of an observation (pixels); shifts
        are drawn between 1/30 and all of it, in random directions.
    slump_density
        Expected slump sites per km² (real landscapes: ~0.07 over Maier et al.'s
        71 400 km², up to several per km² in hot spots).
    ramp_m_per_km
        1σ of each observation's height ramp (tilt) in x and in y (m per km).
    undulation_rms_m
        RMS (m) of each observation's long-wavelength (2–20 km) undulations.
    noise_correlation_px
        Correlation length (px) of the DEM height noise (:mod:`rtsflow.synth.errors`);
        0 = independent pixels. Multi-looked TanDEM-X DEMs: ~1–3 px.
    blunders_per_100km2
        Phase-unwrapping blunders (patches off by k · HoA in low coherence) per
        100 km² and observation; 0 = none.
    terrain
        A real DEM (path, any CRS) as the ground instead of the analytic hills
        (:mod:`rtsflow.synth.terrain`: reprojected, centred on the region,
        mirrored beyond its edges), e.g. ``../shared/data/longyearbyen/DEM_1995.tif``.
    outlines
        Vector files of real RTS polygons (:mod:`rtsflow.synth.outlines`), e.g. the
        Maier et al. Ellesmere reference polygons: slumps take their shapes.
    hard_negatives_per_km2
        Gullies, bank/coastal erosion, snow drifts, spoil heaps and thinning ice
        per km² (:mod:`rtsflow.synth.confounders`); listed in the confounder truth.
    winter_coherence
        Mean base coherence of the winter acquisitions (before slope, patch and
        speckle losses). 0.8 gives a dDEM σ of ~1.7 m over slumps; TanDEM-X is
        bistatic (no temporal decorrelation) and the Maier et al. (2025)
        Ellesmere reference RTS carry a median per-pixel dDEM σ of 0.62 m
        (p10–p90 0.35–1.03 m, ``avg_height_error`` of
        ``../shared/data/maier2025_ellesmere``), which ~0.95 reproduces.
    terrain_offset_km, terrain_turns, terrain_flip
        Which part of the ``terrain`` DEM the region shows: the point ``terrain_offset_km``
        (x, y) from the DEM's centre lands on the region's centre, after mirroring the DEM
        left–right (``terrain_flip``) and turning it by ``terrain_turns`` quarter turns
        anticlockwise. The default, the DEM's own centre as it lies, puts every region of a
        terrain on the same ground; ``pipelines.scenes`` draws training regions and
        benchmark scenes from separate parts of a DEM.
    slump_slopes
        Where slumps form (:class:`rtsflow.synth.scene.Scene`): ``"any"`` hillslope of
        0.5–30° (slumps take the terrain's slopes) or ``"arts"``: slopes drawn from the
        1 832 TanDEM-X RTS of the ARTS inventory (median 7.9°, 5–95 % 3.7–16.7°).

    The realism settings (the last twelve, :data:`REALISM_FIELDS`) default to the
    demo's world (pixel-independent noise, analytic terrain, no confounders);
    ``pipelines.scenes.realistic`` switches them all on, with the values the
    default model's realistic training regions and the generalisation benchmark
    use (TanDEM-X's relative height error reaches decimetres to metres over
    kilometres).
    """

    seed: int = 0
    center_lonlat: tuple[float, float] = (-119.6, 72.9)
    size_km: tuple[float, float] = (5.0, 5.0)
    resolution: float = 10.0
    winters: tuple[int, ...] = (2010, 2013, 2016)
    obs_per_winter: int = 3
    summer: bool = True
    slump_density: float = 1.5
    max_shift_px: float = 3.0
    ramp_m_per_km: float = 0.004
    undulation_rms_m: float = 0.1
    noise_correlation_px: float = 0.0
    blunders_per_100km2: float = 0.0
    terrain: str | None = None
    outlines: tuple[str, ...] | None = None
    hard_negatives_per_km2: float = 0.0
    winter_coherence: float = 0.8
    slump_slopes: str = "any"
    terrain_offset_km: tuple[float, float] = (0.0, 0.0)
    terrain_turns: int = 0
    terrain_flip: bool = False

    def scene(self) -> Scene:
        terrain = None
        if self.terrain is not None:
            from rtsflow.synth.terrain import RasterTerrain

            left, bottom, right, top = self.grid().bounds(self.window())
            terrain = RasterTerrain.from_dem(
                self.terrain,
                centre=((left + right) / 2, (bottom + top) / 2),
                offset=(1000.0 * self.terrain_offset_km[0], 1000.0 * self.terrain_offset_km[1]),
                turns=self.terrain_turns,
                flip=self.terrain_flip,
            )
        outlines = None
        if self.outlines:
            from rtsflow.synth.outlines import load_outlines

            outlines = load_outlines(list(self.outlines))
        return Scene(seed=self.seed, epochs=tuple(self.winters), slump_density=self.slump_density, terrain=terrain,
                     outlines=outlines, negative_density=self.hard_negatives_per_km2,
                     slump_slopes=self.slump_slopes)  # fmt: skip

    def grid(self) -> Grid:
        return Grid(resolution=self.resolution)

    def window(self) -> Window:
        """Pixel window of the region (pixel-aligned, not block-aligned)."""
        grid = self.grid()
        t = Transformer.from_crs("EPSG:4326", GRID_CRS, always_xy=True)
        cx, cy = t.transform(*self.center_lonlat)
        w, h = self.size_km[0] * 1000.0, self.size_km[1] * 1000.0
        row, col = grid.pixel_of(cx - w / 2, cy + h / 2)
        return Window(int(row), int(col), max(1, round(h / grid.resolution)), max(1, round(w / grid.resolution)))


#: Error settings added after the demo's world was fixed (in the model recipe's demo region only when changed).
REALISM_FIELDS = ("ramp_m_per_km", "undulation_rms_m", "noise_correlation_px", "blunders_per_100km2", "terrain",
                  "outlines", "hard_negatives_per_km2", "winter_coherence", "slump_slopes", "terrain_offset_km",
                  "terrain_turns", "terrain_flip")  # fmt: skip


@dataclass
class SynthRegion:
    """Paths and facts of a generated region."""

    root: Path
    config: SynthConfig
    window: Window
    products: list[Path] = field(default_factory=list)
    observations: list[Observation] = field(default_factory=list)
    truth_slumps: Path | None = None
    truth_confounders: Path | None = None
    truth_rasters: dict[str, Path] = field(default_factory=dict)
    n_slumps: int = 0

    @classmethod
    def load(cls, root: str | Path) -> SynthRegion:
        """Re-open a region written by :func:`synthesize`."""
        root = Path(root)
        doc = json.loads((root / "region.json").read_text())
        cfg = doc["config"]
        config = SynthConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()})
        region = cls(root=root, config=config, window=Window(*doc["window"]))
        region.products = [root / p for p in doc["products"]]
        region.truth_slumps = root / doc["truth"]["slumps"]
        region.truth_confounders = root / doc["truth"]["confounders"]
        region.truth_rasters = {k: root / v for k, v in doc["truth"]["rasters"].items()}
        region.n_slumps = doc["n_slumps"]
        region.observations = schedule(
            config.scene(), per_winter=config.obs_per_winter, summer=config.summer, resolution=config.resolution,
            max_shift_px=config.max_shift_px, ramp_sigma=config.ramp_m_per_km / 1000.0,
            undulation_rms=config.undulation_rms_m, winter_coherence=config.winter_coherence,
        )  # fmt: skip
        return region


def _profile(grid: Grid, window: Window, dtype: str, nodata: float | None) -> dict:
    return {
        "driver": "GTiff",
        "height": window.height,
        "width": window.width,
        "count": 1,
        "dtype": dtype,
        "crs": GRID_CRS,
        "transform": grid.transform(window),
        "nodata": nodata,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "zstd",
        "zstd_level": 1,
        "predictor": 3 if dtype.startswith("float") else 2,
        "BIGTIFF": "IF_SAFER",
    }


def _gen_windows(window: Window, size: int) -> list[Window]:
    """Intersections of the region with a global lattice of ``size``-px generation windows."""
    out = []
    for r in range((window.row // size) * size, window.row_stop, size):
        for c in range((window.col // size) * size, window.col_stop, size):
            part = Window(r, c, size, size).intersection(window)
            if part is not None:
                out.append(part)
    return out


def _noise(seed: int, obs_index: int, part: Window, *, purpose: str = "noise", n_fields: int = 3) -> np.ndarray:
    """Standard-normal fields of a window, assembled from a fixed global lattice of noise cells.

    A pixel's noise depends only on (seed, observation, global position), not
    on the region or the generation window it is computed in.
    """
    n = NOISE_CELL
    out = np.empty((n_fields, part.height, part.width), dtype=np.float32)
    for r in range((part.row // n) * n, part.row_stop, n):
        for c in range((part.col // n) * n, part.col_stop, n):
            cell = Window(r, c, n, n)
            common = cell.intersection(part)
            if common is None:
                continue
            rng = rng_for(seed, purpose, obs_index, r // n, c // n)
            full = rng.standard_normal((n_fields, n, n), dtype=np.float32)
            cy, cx = common.relative_to(cell)
            py, px = common.relative_to(part)
            out[:, py, px] = full[:, cy, cx]
    return out


def _observation_noise(config: SynthConfig, obs_index: int, part: Window) -> np.ndarray:
    """The three noise fields of :func:`render_observation`; the DEM's correlated when configured."""
    noise = _noise(config.seed, obs_index, part)
    if config.noise_correlation_px > 0:
        h = halo_px(config.noise_correlation_px)
        grown = Window(part.row - h, part.col - h, part.height + 2 * h, part.width + 2 * h)
        white = _noise(config.seed, obs_index, grown, purpose="noise_correlated", n_fields=1)[0]
        noise[0] = correlated_noise(white, length_px=config.noise_correlation_px)
    return noise


def _blunders(config: SynthConfig, obs, part: Window, coherence: np.ndarray) -> np.ndarray:
    cell_km2 = (BLUNDER_CELL * config.resolution / 1000.0) ** 2
    return blunder_offsets(
        rows=np.arange(part.row, part.row_stop),
        cols=np.arange(part.col, part.col_stop),
        coherence=coherence,
        hoa=obs.hoa,
        rate_per_cell=config.blunders_per_100km2 * cell_km2 / 100.0,
        rng_for_cell=lambda r, c: rng_for(config.seed, "blunders", obs.index, r, c),
    )


def synthesize(out: str | Path, *, config: SynthConfig | None = None, window_px: int = GEN_WINDOW) -> SynthRegion:
    """Generate a synthetic region: products (user format) and ground truth.

    Parameters
    ----------
    out
        Output directory (created; existing files of the same names are replaced).
    config
        What to generate; defaults to :class:`SynthConfig()`.
    window_px
        Edge of the generation windows (px): memory is bounded by one window,
        and the output does not depend on it.

    Returns
    -------
    SynthRegion
    """
    config = config or SynthConfig()
    out = Path(out)
    (out / "products").mkdir(parents=True, exist_ok=True)
    (out / "truth").mkdir(parents=True, exist_ok=True)
    grid = config.grid()
    window = config.window()
    scene = config.scene()
    observations = schedule(
        scene,
        per_winter=config.obs_per_winter,
        summer=config.summer,
        resolution=config.resolution,
        max_shift_px=config.max_shift_px,
        ramp_sigma=config.ramp_m_per_km / 1000.0,
        undulation_rms=config.undulation_rms_m,
        winter_coherence=config.winter_coherence,
    )
    left, bottom, right, top = grid.bounds(window)
    centre = ((left + right) / 2, (bottom + top) / 2)
    region = SynthRegion(root=out, config=config, window=window, observations=observations)

    # -- products -------------------------------------------------------------
    paths = {(o.index, k): out / "products" / f"{o.id}_{k}.tif" for o in observations for k in _LAYERS}
    dtypes = {"dem": "float32", "coherence": "float32", "layover_shadow": "uint8", "incidence": "float32"}
    files = {key: rasterio.open(p, "w", **_profile(grid, window, dtypes[key[1]], None)) for key, p in paths.items()}
    pairs = list(combinations(range(len(scene.epochs)), 2))
    truth_paths = {"water": out / "truth" / "water.tif", "reference_dem": out / "reference_dem.tif"}
    for i, j in pairs:
        w0, w1 = scene.epochs[i], scene.epochs[j]
        truth_paths[f"dh_{w0}_{w1}"] = out / "truth" / f"dh_{w0}_{w1}.tif"
        truth_paths[f"rts_mask_{w0}_{w1}"] = out / "truth" / f"rts_mask_{w0}_{w1}.tif"
    truth_files = {
        k: rasterio.open(p, "w", **_profile(grid, window, "float32" if k.startswith(("dh", "ref")) else "uint8", None))
        for k, p in truth_paths.items()
    }
    try:
        for part in _gen_windows(window, window_px):
            x, y = grid.coords(part)
            rw = RioWindow(part.col - window.col, part.row - window.row, part.width, part.height)
            for obs in observations:
                noise = _observation_noise(config, obs.index, part)
                layers = render_observation(scene, obs, x, y, noise=noise, centre=centre)
                if config.blunders_per_100km2 > 0:
                    layers["dem"] = layers["dem"] + _blunders(config, obs, part, layers["coherence"])
                for k in _LAYERS:
                    files[(obs.index, k)].write(layers[k].astype(dtypes[k]), 1, window=rw)
            truth_files["water"].write(scene.water(x, y).astype(np.uint8), 1, window=rw)
            # Stand-in for an external reference DEM (e.g. a Copernicus/ArcticDEM mosaic): the
            # first epoch's ground, geolocated exactly, without noise.
            truth_files["reference_dem"].write(scene.surface(x, y, 0).astype(np.float32), 1, window=rw)
            for i, j in pairs:
                w0, w1 = scene.epochs[i], scene.epochs[j]
                dh = scene.slump_change(x, y, j, since=i)
                truth_files[f"dh_{w0}_{w1}"].write(dh.astype(np.float32), 1, window=rw)
                truth_files[f"rts_mask_{w0}_{w1}"].write(scene.active_mask(x, y, i, j).astype(np.uint8), 1, window=rw)
    finally:
        for f in (*files.values(), *truth_files.values()):
            f.close()

    for obs in observations:
        sidecar = out / "products" / f"{obs.id}.json"
        write_sidecar(
            sidecar,
            id=obs.id,
            acquired=obs.time,
            sensor="TanDEM-X (synthetic)",
            orbit=obs.orbit,
            hoa_m=obs.hoa,
            **{k: paths[(obs.index, k)] for k in _LAYERS},
        )
        region.products.append(sidecar)

    # -- truth vectors --------------------------------------------------------
    slumps = _truth_slumps(scene, grid, window)
    region.n_slumps = int(slumps["slump_id"].nunique()) if len(slumps) else 0
    region.truth_slumps = out / "truth" / "slumps.parquet"
    slumps.to_parquet(region.truth_slumps)
    region.truth_confounders = out / "truth" / "confounders.parquet"
    _truth_confounders(scene, grid, window).to_parquet(region.truth_confounders)
    region.truth_rasters = truth_paths

    doc = {
        "rtsflow_version": __version__,
        "config": asdict(config),
        "window": [window.row, window.col, window.height, window.width],
        "bounds_epsg3413": list(grid.bounds(window)),
        "epochs": list(scene.epochs),
        "products": [str(p.relative_to(out)) for p in region.products],
        "observations": [
            {
                "id": o.id,
                "time": str(o.time),
                "winter": o.winter,
                "hoa_m": o.hoa,
                "orbit": o.orbit,
                "shift_m": list(o.shift),
                "tilt": list(o.tilt),
            }
            for o in observations
        ],
        "truth": {
            "slumps": str(region.truth_slumps.relative_to(out)),
            "confounders": str(region.truth_confounders.relative_to(out)),
            "rasters": {k: str(p.relative_to(out)) for k, p in truth_paths.items()},
        },
        "n_slumps": region.n_slumps,
    }
    (out / "region.json").write_text(json.dumps(doc, indent=2) + "\n")
    return region


def _slump_window(grid: Grid, s: Slump) -> Window:
    row, col = grid.pixel_of(s.x, s.y)
    r = math.ceil(s.radius / grid.resolution) + 1
    return Window(int(row) - r, int(col) - r, 2 * r + 1, 2 * r + 1)


def _truth_slumps(scene: Scene, grid: Grid, window: Window) -> gpd.GeoDataFrame:
    """Per slump and epoch pair: scar polygon (pixel union) and exact area/volume on the grid."""
    to_ll = Transformer.from_crs(GRID_CRS, "EPSG:4326", always_xy=True)
    rows = []
    for s in scene.slumps(grid.bounds(window)):
        full = _slump_window(grid, s)
        win = full.intersection(window)
        if win is None:
            continue
        x, y = grid.coords(win)
        ground = grid.pixel_ground_area(win)
        for i, j in combinations(range(len(scene.epochs)), 2):
            f0, f1 = s.fractions[i], s.fractions[j]
            if f0 == f1:
                continue
            mask = s.footprint(x, y, f1)
            if not mask.any():
                continue
            dh = s.elevation_change(x, y, f1) - (s.elevation_change(x, y, f0) if f0 > 0 else 0.0)
            shapes = [
                shapely.geometry.shape(g)
                for g, v in gdal.shapes(mask.astype(np.uint8), mask=mask, transform=grid.transform(win))
                if v == 1
            ]
            geom = shapely.union_all(shapes)
            c = geom.centroid
            lon, lat = to_ll.transform(c.x, c.y)
            w0, w1 = scene.epochs[i], scene.epochs[j]
            rows.append(
                {
                    "slump_id": s.id,
                    "winter_start": w0,
                    "winter_end": w1,
                    "years": w1 - w0,
                    "onset_winter": scene.epochs[s.onset],
                    "new_in_period": s.fractions[i] == 0,
                    "n_pixels": int(mask.sum()),
                    "area_m2": float(ground[mask].sum()),
                    "area_nominal_m2": float(mask.sum() * grid.pixel_area_nominal),
                    "volume_m3": float((dh * ground)[mask].sum()),
                    "volume_nominal_m3": float(dh[mask].sum() * grid.pixel_area_nominal),
                    "mean_dh_m": float(dh[mask].mean()),
                    "max_depth_m": float(-dh[mask].min()),
                    "clipped": win != full,
                    "lon": lon,
                    "lat": lat,
                    "geometry": geom,
                }
            )
    cols = ["slump_id", "winter_start", "winter_end", "geometry"]
    if not rows:
        return gpd.GeoDataFrame(columns=cols, geometry="geometry", crs=GRID_CRS)
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=GRID_CRS)


def _truth_confounders(scene: Scene, grid: Grid, window: Window) -> gpd.GeoDataFrame:
    bounds = grid.bounds(window)
    box = shapely.box(*bounds)
    rows = []
    for p in scene.pits(bounds):
        geom = shapely.Point(p.x, p.y).buffer(p.radius, quad_segs=16)
        if geom.intersects(box):
            rows.append(
                {
                    "kind": "pit",
                    "object_id": p.id,
                    "onset_winter": scene.epochs[p.onset],
                    "depth_m": p.depth,
                    "level_change_m": 0.0,
                    "geometry": geom,
                }
            )
    for lake in scene.lakes(bounds):
        circle = shapely.Point(0, 0).buffer(1.0, quad_segs=32)
        geom = shapely.affinity.scale(circle, lake.a, lake.b)
        geom = shapely.affinity.rotate(geom, lake.angle, use_radians=True, origin=(0, 0))
        geom = shapely.affinity.translate(geom, lake.x, lake.y)
        if geom.intersects(box):
            rows.append(
                {
                    "kind": "lake",
                    "object_id": lake.id,
                    "onset_winter": scene.epochs[0],
                    "depth_m": 0.0,
                    "level_change_m": float(lake.level_change[-1]),
                    "geometry": geom,
                }
            )
    for c in scene.negatives(bounds):
        geom = c.outline(len(scene.epochs) - 1)
        if geom.intersects(box):
            rows.append({"kind": c.kind, "object_id": c.id, "onset_winter": scene.epochs[c.onset],
                         "depth_m": float(c.depth), "level_change_m": 0.0, "geometry": geom})  # fmt: skip
    if not rows:
        return gpd.GeoDataFrame(columns=["kind", "object_id", "geometry"], geometry="geometry", crs=GRID_CRS)
    return gpd.GeoDataFrame(rows, geometry="geometry", crs=GRID_CRS)
