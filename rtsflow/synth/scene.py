"""The synthetic world: terrain, lakes, thaw slumps and confounders at each epoch.

Pure NumPy. A :class:`Scene` is fully determined by its seed; every method
evaluates on any grid window, so regions of any size are generated block by
block.

Slump statistics follow real inventories (fitted once, values below):

- planimetric area: log-normal, ln-mean 8.83, ln-sd 0.80 (median 6 800 m²),
  from the 279 expert-labelled RTS of Maier et al. 2025 (Ellesmere, 10 m),
  consistent with the Taymyr TP2 inventory of Bernhard et al. 2022
  (median 5 500 m², 5-95 % 1 700-29 900 m²); clipped to 1 000-100 000 m².
- mean elevation change over a slump: log-normal, ln-mean 1.18, ln-sd 0.32
  (median 3.3 m, 5-95 % 2.0-5.9 m), from the same Ellesmere polygons
  (``tot_volume_change / area``); peak depth reaches ~20 m for large slumps.
- hillslope gradient where slumps form (``slump_slopes="arts"``): log-normal,
  ln-mean 2.06, ln-sd 0.47 (median 7.9°, 5-95 % 3.6-17.0°), fitted to the
  ``dem_avg_slope`` of the 1 832 TanDEM-X RTS of the ARTS inventory (Bernhard
  et al. 2022, ``../shared/data/arts_bernhard2022``; data 5-95 % 3.7-16.7°).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from rtsflow.synth.fields import PlaneWaves, bump, cell_candidate, rng_for

if TYPE_CHECKING:
    from rtsflow.synth.confounders import Confounder
    from rtsflow.synth.terrain import RasterTerrain

__all__ = ["SLUMP_STATS", "Lake", "Pit", "Scene", "Slump"]

SLUMP_STATS = {
    "log_area_mean": 8.83,
    "log_area_sd": 0.80,
    "area_min": 1_000.0,
    "area_max": 100_000.0,
    "log_depth_mean": 1.18,
    "log_depth_sd": 0.32,
    "depth_min": 0.8,
    "depth_max": 12.0,
    "max_depth_cap": 20.0,
    "log_slope_mean": 2.06,
    "log_slope_sd": 0.47,
}
#: Points of a slump's lattice cell tried for a site at a drawn slope, how close (in ln) the best must be, and
#: how many slopes are drawn before the cell is left without a slump.
SLOPE_SITE_TRIES = 128
SLOPE_SITE_TOLERANCE = 0.15
SLOPE_SITE_TARGETS = 3
#: How slumps choose their sites: any hillslope of 0.5-30°, or slopes drawn from the ARTS inventory.
SLUMP_SLOPES = ("any", "arts")

# Lattice cell (m) and the largest reach (m) of each object kind; densities per km² from the Scene.
MAX_LAKE_SLOPE_DEG = 2.0  # lakes on real terrain: only where the ground is this flat
SLUMP_CELL = 400.0
LAKE_CELL = 1_500.0
PIT_CELL = 500.0
NEGATIVE_CELL = 600.0
_KINDS = {
    "slumps": (SLUMP_CELL, 360.0),
    "lakes": (LAKE_CELL, 700.0),
    "pits": (PIT_CELL, 30.0),
    "negatives": (NEGATIVE_CELL, 900.0),
}
_DENSITY = {
    "slumps": lambda scene: scene.slump_density,
    "lakes": lambda scene: scene.lake_density,
    "pits": lambda scene: scene.pit_density,
    "negatives": lambda scene: scene.negative_density,
}


def _shape(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Relative erosion depth of a slump at normalised coordinates.

    ``s`` runs 0 (headwall) → 1 (toe) downslope, ``t`` -1 → 1 across. Steep
    scarp at the rim (cube-root profile), deepest just below the headwall.
    """
    r2 = (2.0 * s - 1.0) ** 2 + t**2
    return bump(r2, 1.0 / 3.0) * np.clip(1.25 - 0.9 * s, 0.0, None)


def _shape_mean() -> float:
    n = 801
    s, t = np.meshgrid(np.linspace(0, 1, n), np.linspace(-1, 1, n))
    inside = (2 * s - 1) ** 2 + t**2 < 1
    return float(_shape(s, t)[inside].mean())


SHAPE_MEAN = _shape_mean()


@dataclass(frozen=True)
class Slump:
    """One retrogressive thaw slump, fully grown at ``fraction == 1``.

    Attributes
    ----------
    id
        Stable id from its lattice cell.
    x, y
        Centre of the fully grown scar (EPSG:3413 m).
    direction
        Downslope unit vector ``(dx, dy)``.
    length, width
        Fully grown scar size along / across the slope (m).
    depth
        Peak erosion depth scale (m); the mean over the scar is ``depth * SHAPE_MEAN``.
    fractions
        Growth fraction at each epoch (0 before onset, 1 when fully grown).
    outline
        A real RTS shape (:mod:`rtsflow.synth.outlines`): vertices ``(n, 2)`` in the
        slump frame (``s`` 0 → 1 downslope, ``t`` −1 → 1 across); None = an ellipse.
        The erosion depth then follows the distance to the outline's rim.
    """

    id: int
    x: float
    y: float
    direction: tuple[float, float]
    length: float
    width: float
    depth: float
    fractions: tuple[float, ...]
    priority: float = field(default=0.0, compare=False)
    outline: np.ndarray | None = field(default=None, compare=False, repr=False)

    @property
    def onset(self) -> int:
        """Index of the first epoch at which the slump exists."""
        return next(i for i, f in enumerate(self.fractions) if f > 0)

    def geometry_at(self, fraction: float) -> tuple[float, float, float, float]:
        """(centre x, centre y, length, width) of the scar at a growth fraction.

        The toe stays put while the headwall retreats upslope as it grows.
        """
        length = self.length * (0.55 + 0.45 * fraction)
        width = self.width * (0.7 + 0.3 * fraction)
        dx, dy = self.direction
        toe_x = self.x + dx * self.length / 2
        toe_y = self.y + dy * self.length / 2
        return toe_x - dx * length / 2, toe_y - dy * length / 2, length, width

    def local_coords(self, x: np.ndarray, y: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
        cx, cy, length, width = self.geometry_at(fraction)
        dx, dy = self.direction
        px = x[None, :] - cx
        py = y[:, None] - cy
        s = 0.5 + (px * dx + py * dy) / length
        t = 2.0 * (-px * dy + py * dx) / width
        return s, t

    def _outline_r2(self, s: np.ndarray, t: np.ndarray, fraction: float) -> np.ndarray:
        """Like the ellipse's ρ²: 0 at the deepest inside point, 1 on the rim, > 1 outside (metric distances)."""
        import shapely

        _, _, length, width = self.geometry_at(fraction)
        poly = shapely.Polygon(np.column_stack([self.outline[:, 0] * length, self.outline[:, 1] * width / 2]))
        d_ref = shapely.maximum_inscribed_circle(poly, 0.01 * min(length, width)).length
        u, v = np.broadcast_arrays(s * length, t * width / 2)
        d = shapely.distance(poly.boundary, shapely.points(u.ravel(), v.ravel())).reshape(u.shape)
        inside = shapely.contains_xy(poly, u, v)
        rho = np.where(inside, 1.0 - np.clip(d / d_ref, 0.0, 1.0), 1.0 + d / d_ref)
        return rho**2

    def elevation_change(self, x: np.ndarray, y: np.ndarray, fraction: float) -> np.ndarray:
        """Elevation change (m) relative to undisturbed ground at a growth fraction."""
        if fraction <= 0:
            return np.zeros((y.size, x.size))
        s, t = self.local_coords(x, y, fraction)
        if self.outline is not None:
            shape = bump(self._outline_r2(s, t, fraction), 1.0 / 3.0) * np.clip(1.25 - 0.9 * s, 0.0, None)
        else:
            shape = _shape(s, t)
        erosion = self.depth * fraction * shape
        # Debris tongue just below the toe (positive change).
        tongue = 0.12 * self.depth * fraction * bump(((s - 1.12) / 0.22) ** 2 + (t / 0.45) ** 2)
        return tongue - erosion

    def footprint(self, x: np.ndarray, y: np.ndarray, fraction: float) -> np.ndarray:
        """Boolean scar mask at a growth fraction (pixel centres inside the scar)."""
        if fraction <= 0:
            return np.zeros((y.size, x.size), dtype=bool)
        s, t = self.local_coords(x, y, fraction)
        if self.outline is not None:
            import shapely

            s, t = np.broadcast_arrays(s, t)
            return shapely.contains_xy(shapely.Polygon(self.outline), s, t)
        return (2.0 * s - 1.0) ** 2 + t**2 < 1.0

    @property
    def radius(self) -> float:
        """Distance from the centre beyond which the slump changes nothing."""
        r = 0.5 * self.length * 1.7 + 1.0
        if self.outline is not None:  # a real outline may fill the corners of its box
            r = max(r, 0.5 * math.hypot(self.length, self.width) + 1.0)
        return r

    @property
    def reach(self) -> float:
        """Half the minimum distance kept to other objects' centres."""
        return max(self.radius, 0.5 * self.width) + 10.0


@dataclass(frozen=True)
class Lake:
    id: int
    x: float
    y: float
    a: float
    b: float
    angle: float
    level: float
    level_change: tuple[float, ...]  # per epoch, relative to ``level``
    priority: float = field(default=0.0, compare=False)
    reach: float = field(default=0.0, compare=False)

    def rho2(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        px = x[None, :] - self.x
        py = y[:, None] - self.y
        c, s = np.cos(self.angle), np.sin(self.angle)
        return ((px * c + py * s) / self.a) ** 2 + ((-px * s + py * c) / self.b) ** 2


@dataclass(frozen=True)
class Pit:
    """A confounder: a small round depression (thermokarst pit, borrow pit)."""

    id: int
    x: float
    y: float
    radius: float
    depth: float
    onset: int
    priority: float = field(default=0.0, compare=False)

    @property
    def reach(self) -> float:
        return self.radius + 10.0


@dataclass(frozen=True)
class Scene:
    """The synthetic world, deterministic by ``seed``.

    Parameters
    ----------
    seed
        Everything random derives from it.
    epochs
        Winter years of the surface states (e.g. ``(2010, 2013, 2016)``).
    slump_density
        Expected slump sites per km².
    relief
        RMS of the hill field (m).
    terrain
        Real terrain (:class:`rtsflow.synth.terrain.RasterTerrain`) instead of the
        analytic hills and valleys; lakes then form only on flat ground (slope
        < ``MAX_LAKE_SLOPE_DEG``), and ground at or below its sea level is water.
    outlines
        Real RTS shapes (:func:`rtsflow.synth.outlines.load_outlines`); each slump
        draws one (mirrored at random) instead of an ellipse.
    negative_density
        Hard negatives per km² (:mod:`rtsflow.synth.confounders`: gullies, bank and
        coastal erosion, snow drifts, spoil heaps, thinning ice), kept apart from slumps.
    slump_slopes
        ``"any"``: a slump forms at its cell's random point when the hillslope there is
        0.5-30°, so slumps take the terrain's slopes (gentle on the analytic hills, steep
        on mountain DEMs). ``"arts"``: each slump draws a slope from the ARTS inventory's
        distribution (:data:`SLUMP_STATS`) and takes the point of its cell, of
        :data:`SLOPE_SITE_TRIES`, whose slope is nearest to it (none within
        :data:`SLOPE_SITE_TOLERANCE` in ln: no slump there), so that slumps sit on the
        slopes real ones do, whatever the terrain.
    """

    seed: int = 0
    epochs: tuple[int, ...] = (2010, 2013, 2016)
    slump_density: float = 1.5
    lake_density: float = 0.15
    pit_density: float = 0.4
    relief: float = 30.0
    valley_depth: float = 45.0
    stats: dict = field(default_factory=lambda: dict(SLUMP_STATS))
    terrain: RasterTerrain | None = field(default=None, compare=False)
    outlines: tuple[np.ndarray, ...] | None = field(default=None, compare=False, repr=False)
    negative_density: float = 0.0
    slump_slopes: str = "any"

    def __post_init__(self) -> None:
        if self.slump_slopes not in SLUMP_SLOPES:
            raise ValueError(f"slump_slopes must be one of {SLUMP_SLOPES}, got {self.slump_slopes!r}")
        object.__setattr__(self, "_cells", {})

    @cached_property
    def hills(self) -> PlaneWaves:
        return PlaneWaves.random(
            rng_for(self.seed, "hills"), n=48, wavelength=(250.0, 20_000.0), rms=self.relief, spectral_slope=0.8
        )

    @cached_property
    def valley_field(self) -> PlaneWaves:
        return PlaneWaves.random(
            rng_for(self.seed, "valleys"), n=12, wavelength=(3_000.0, 12_000.0), rms=1.0, spectral_slope=0.5
        )

    # -- base terrain ----------------------------------------------------------
    _VALLEY_HALF_WIDTH = 0.06  # in units of the valley field

    def base_terrain(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Hills plus incised valleys (along zero lines of a smooth field), or the real terrain, float64 (m)."""
        if self.terrain is not None:
            return self.terrain.on_grid(x, y)
        z = 150.0 + self.hills.on_grid(x, y, dtype=np.float64)
        v = self.valley_field.on_grid(x, y, dtype=np.float64)
        z -= self.valley_depth * np.exp(-((v / self._VALLEY_HALF_WIDTH) ** 2))
        return z

    def base_terrain_at(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        if self.terrain is not None:
            return self.terrain.at(x, y)
        v = self.valley_field.at(x, y)
        return 150.0 + self.hills.at(x, y) - self.valley_depth * np.exp(-((v / self._VALLEY_HALF_WIDTH) ** 2))

    def base_gradient_at(self, x: float, y: float) -> tuple[float, float]:
        if self.terrain is not None:
            return self.terrain.gradient_at(x, y)
        gx, gy = self.hills.gradient_at(x, y)
        v = self.valley_field.at(x, y)
        vx, vy = self.valley_field.gradient_at(x, y)
        w = self._VALLEY_HALF_WIDTH
        k = self.valley_depth * np.exp(-((v / w) ** 2)) * 2.0 * v / w**2
        return float(gx + k * vx), float(gy + k * vy)

    # -- objects -----------------------------------------------------------------
    def _objects(self, kind: str, bounds: tuple[float, float, float, float]) -> list:
        """Objects of one kind that can affect ``bounds``, thinned so none overlap.

        Each lattice cell holds at most one candidate; a candidate is dropped
        when a neighbour with a higher priority lies closer than their two
        reaches (a Matérn type-II hard-core process). Placement therefore
        looks random, not gridded, and depends only on the seed.
        """
        cell, reach_max = _KINDS[kind]
        p = min(_DENSITY[kind](self) * (cell / 1000.0) ** 2, 1.0)
        left, bottom, right, top = _grow(bounds, reach_max)
        ring = math.ceil(2 * reach_max / cell)
        out = []
        for i in range(math.floor(left / cell), math.floor(right / cell) + 1):
            for j in range(math.floor(bottom / cell), math.floor(top / cell) + 1):
                c = self._candidate(kind, i, j, cell, p)
                if c is None:
                    continue
                keep = True
                for di in range(-ring, ring + 1):
                    for dj in range(-ring, ring + 1):
                        if di == dj == 0:
                            continue
                        n = self._candidate(kind, i + di, j + dj, cell, p)
                        if (
                            n is not None
                            and n.priority > c.priority
                            and (math.hypot(n.x - c.x, n.y - c.y) < n.reach + c.reach)
                        ):
                            keep = False
                            break
                    if not keep:
                        break
                if keep:
                    out.append(c)
        return out

    def _candidate(self, kind: str, i: int, j: int, cell: float, p: float):
        key = (kind, i, j)
        cache = self._cells  # type: ignore[attr-defined]
        if key not in cache:
            point = cell_candidate(self.seed, kind, i, j, cell=cell, probability=p)
            cache[key] = None if point is None else getattr(self, f"_make_{kind[:-1]}")(i, j, *point)
        return cache[key]

    def lakes(self, bounds: tuple[float, float, float, float]) -> list[Lake]:
        """Lakes that can affect ``bounds`` (left, bottom, right, top)."""
        return self._objects("lakes", bounds)

    def slumps(self, bounds: tuple[float, float, float, float]) -> list[Slump]:
        """Slumps that can affect ``bounds``, with sizes and depths from :data:`SLUMP_STATS`."""
        return self._objects("slumps", bounds)

    def pits(self, bounds: tuple[float, float, float, float]) -> list[Pit]:
        """Confounder pits that can affect ``bounds``."""
        return self._objects("pits", bounds)

    def negatives(self, bounds: tuple[float, float, float, float]) -> list[Confounder]:
        """Hard negatives (:mod:`rtsflow.synth.confounders`) that can affect ``bounds``."""
        return self._objects("negatives", bounds) if self.negative_density > 0 else []

    def _make_negative(self, i: int, j: int, rng: np.random.Generator, x: float, y: float,
                       priority: float) -> Confounder | None:  # fmt: skip
        from rtsflow.synth.confounders import make_confounder

        c = make_confounder(rng, id=_cell_id(i, j), x=x, y=y, priority=priority, n_epochs=len(self.epochs),
                            gradient=self.base_gradient_at(x, y))  # fmt: skip
        if c is None:
            return None
        for s in self.slumps((x - 1, y - 1, x + 1, y + 1)):
            if math.hypot(x - s.x, y - s.y) < s.reach + c.reach:
                return None  # apart from slumps, so the RTS truth stays clean
        return c

    def _make_lake(self, i: int, j: int, rng: np.random.Generator, x: float, y: float, priority: float) -> Lake:
        a = rng.uniform(120.0, 450.0)
        b = a * rng.uniform(0.45, 1.0)
        angle = rng.uniform(0.0, np.pi)
        if self.terrain is not None:
            # Water collects on flat ground: no lake on a hillside of real terrain.
            if math.hypot(*self.base_gradient_at(x, y)) > math.tan(math.radians(MAX_LAKE_SLOPE_DEG)):
                return None
            if self.base_terrain_at(np.array([x]), np.array([y]))[0] <= self.terrain.sea_level_m:
                return None
        level = float(self.base_terrain_at(np.array([x]), np.array([y]))[0]) - 1.0
        change = [0.0]
        drains = rng.random() < 0.35  # some lakes drain: a confounder for dDEM
        for _ in self.epochs[1:]:
            change.append(change[-1] - (rng.uniform(0.3, 2.0) if drains else rng.uniform(-0.1, 0.1)))
        return Lake(_cell_id(i, j), x, y, a, b, angle, level, tuple(change), priority, 1.5 * a + 20.0)

    def _make_slump(
        self, i: int, j: int, rng: np.random.Generator, x: float, y: float, priority: float
    ) -> Slump | None:
        st = self.stats
        area = float(np.clip(rng.lognormal(st["log_area_mean"], st["log_area_sd"]), st["area_min"], st["area_max"]))
        aspect = rng.uniform(0.8, 1.8)  # width / length: RTS are often wider than long
        length = float(np.sqrt(4.0 * area / (np.pi * aspect)))
        width = aspect * length
        mean_depth = float(
            np.clip(rng.lognormal(st["log_depth_mean"], st["log_depth_sd"]), st["depth_min"], st["depth_max"])
        )
        depth = min(mean_depth / SHAPE_MEAN, st["max_depth_cap"])
        onset = int(rng.integers(1, len(self.epochs))) if len(self.epochs) > 1 else 0
        fractions = [0.0] * onset + [rng.uniform(0.45, 0.85)]
        for _ in range(onset + 1, len(self.epochs)):
            fractions.append(fractions[-1] + (1.0 - fractions[-1]) * rng.uniform(0.4, 1.0))
        fractions[-1] = 1.0 if fractions[-1] > 0 else 0.0
        if self.slump_slopes == "arts":
            site = self._slope_site(i, j, rng)
            if site is None:
                return None
            x, y = site
        gx, gy = self.base_gradient_at(x, y)
        slope = math.hypot(gx, gy)
        if slope < math.tan(math.radians(0.5)) or slope > math.tan(math.radians(30.0)):
            return None  # slumps form on gentle-to-moderate slopes
        direction = (-gx / slope, -gy / slope)
        outline = None
        if self.outlines:
            # Drawn last, so scenes without outlines keep every other draw.
            outline = self.outlines[int(rng.integers(len(self.outlines)))]
            if rng.random() < 0.5:
                outline = outline * np.array([1.0, -1.0])  # mirrored across the slope axis
        slump = Slump(_cell_id(i, j), x, y, direction, length, width, depth, tuple(fractions), priority, outline)
        for lake in self.lakes((x - 1, y - 1, x + 1, y + 1)):
            if math.hypot(x - lake.x, y - lake.y) < max(lake.a, lake.b) + slump.reach:
                return None  # keep scars out of lakes (they may still sit near shores)
        return slump

    def _slope_site(self, i: int, j: int, rng: np.random.Generator) -> tuple[float, float] | None:
        """A point of cell ``(i, j)`` at a slope drawn from the ARTS inventory, or None.

        Up to :data:`SLOPE_SITE_TARGETS` slopes are drawn in turn; the first that one of the
        cell's :data:`SLOPE_SITE_TRIES` random points matches within
        :data:`SLOPE_SITE_TOLERANCE` (in ln) places the slump at that point. The redraws keep
        the slump density on terrain that lacks some slopes (the analytic hills have few
        above 10°), at the cost of leaning towards the slopes the terrain has.
        """
        st = self.stats
        xs = (i + rng.random(SLOPE_SITE_TRIES)) * SLUMP_CELL
        ys = (j + rng.random(SLOPE_SITE_TRIES)) * SLUMP_CELL
        grad = np.array([self.base_gradient_at(a, b) for a, b in zip(xs, ys, strict=True)])
        slopes = np.degrees(np.arctan(np.hypot(grad[:, 0], grad[:, 1])))
        for _ in range(SLOPE_SITE_TARGETS):
            target = float(np.clip(rng.lognormal(st["log_slope_mean"], st["log_slope_sd"]), 0.5, 30.0))
            miss = np.abs(np.log(np.maximum(slopes, 1e-3) / target))
            k = int(np.argmin(miss))
            if miss[k] <= SLOPE_SITE_TOLERANCE:
                return float(xs[k]), float(ys[k])
        return None

    def _make_pit(self, i: int, j: int, rng: np.random.Generator, x: float, y: float, priority: float) -> Pit | None:
        onset = int(rng.integers(1, len(self.epochs))) if len(self.epochs) > 1 else 0
        pit = Pit(_cell_id(i, j), x, y, rng.uniform(6.0, 17.0), rng.uniform(1.0, 3.5), onset, priority)
        for s in self.slumps((x - 1, y - 1, x + 1, y + 1)):
            if math.hypot(x - s.x, y - s.y) < s.reach + pit.reach:
                return None  # confounders sit apart from slumps so truth stays clean
        return pit

    # -- surfaces ----------------------------------------------------------------
    def water(self, x: np.ndarray, y: np.ndarray, epoch: int = 0) -> np.ndarray:
        """Lake (and, with real terrain, sea) mask (bool) at an epoch index."""
        out = np.zeros((y.size, x.size), dtype=bool)
        if self.terrain is not None:
            out |= self.terrain.on_grid(x, y) <= self.terrain.sea_level_m
        for lake in self.lakes(_bounds(x, y)):
            sl = _local(x, y, lake.x, lake.y, max(lake.a, lake.b))
            if sl is not None:
                out[sl] |= lake.rho2(x[sl[1]], y[sl[0]]) < 1.0
        return out

    def surface(self, x: np.ndarray, y: np.ndarray, epoch: int, *, with_slumps: bool = True) -> np.ndarray:
        """Ground (or lake-surface) elevation at epoch index ``epoch``, float64 (m)."""
        z = self.base_terrain(x, y)
        bounds = _bounds(x, y)
        for lake in self.lakes(bounds):
            sl = _local(x, y, lake.x, lake.y, 1.5 * max(lake.a, lake.b))
            if sl is None:
                continue
            r2 = lake.rho2(x[sl[1]], y[sl[0]])
            level = lake.level + lake.level_change[epoch]
            # Water surface inside, smooth shore ramp out to 1.5 radii.
            w = np.clip((np.sqrt(r2) - 1.0) / 0.5, 0.0, 1.0)
            w = w * w * (3.0 - 2.0 * w)
            z[sl] = level + (z[sl] - level) * w
        if with_slumps:
            z += self.slump_change(x, y, epoch)
        for pit in self.pits(bounds):
            sl = _local(x, y, pit.x, pit.y, pit.radius)
            if epoch >= pit.onset and sl is not None:
                xs, ys = x[sl[1]], y[sl[0]]
                r2 = ((xs[None, :] - pit.x) ** 2 + (ys[:, None] - pit.y) ** 2) / pit.radius**2
                z[sl] -= pit.depth * bump(r2, 0.5)
        for c in self.negatives(bounds):
            sl = _local(x, y, c.x, c.y, c.radius)
            if sl is not None:
                z[sl] += c.elevation_change(x[sl[1]], y[sl[0]], epoch)
        return z

    def _slumps_local(self, x: np.ndarray, y: np.ndarray):
        """Each slump that can affect the grid ``x`` × ``y``, with its local slices and coordinates."""
        for slump in self.slumps(_bounds(x, y)):
            sl = _local(x, y, slump.x, slump.y, slump.radius)
            if sl is not None:
                yield slump, sl, x[sl[1]], y[sl[0]]

    def slump_change(self, x: np.ndarray, y: np.ndarray, epoch: int, since: int | None = None) -> np.ndarray:
        """Elevation change by slumps at ``epoch`` (relative to epoch ``since``, or to no slumps)."""
        out = np.zeros((y.size, x.size))
        for slump, sl, xs, ys in self._slumps_local(x, y):
            f1 = slump.fractions[epoch]
            f0 = 0.0 if since is None else slump.fractions[since]
            if f1 == f0:
                continue
            out[sl] += slump.elevation_change(xs, ys, f1)
            if f0 > 0:
                out[sl] -= slump.elevation_change(xs, ys, f0)
        return out

    def active_mask(self, x: np.ndarray, y: np.ndarray, since: int, epoch: int) -> np.ndarray:
        """Pixels inside the end-of-period scar of every slump that changed between two epochs."""
        out = np.zeros((y.size, x.size), dtype=bool)
        for slump, sl, xs, ys in self._slumps_local(x, y):
            if slump.fractions[epoch] != slump.fractions[since]:
                out[sl] |= slump.footprint(xs, ys, slump.fractions[epoch])
        return out


def _grow(bounds: tuple[float, float, float, float], d: float) -> tuple[float, float, float, float]:
    return (bounds[0] - d, bounds[1] - d, bounds[2] + d, bounds[3] + d)


def _bounds(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    return (float(np.min(x)), float(np.min(y)), float(np.max(x)), float(np.max(y)))


def _local(x: np.ndarray, y: np.ndarray, cx: float, cy: float, r: float) -> tuple[slice, slice] | None:
    """Row/col slices of the grid ``x`` × ``y`` within ``r`` of ``(cx, cy)`` (None if empty)."""
    ix = np.nonzero(np.abs(x - cx) <= r)[0]
    iy = np.nonzero(np.abs(y - cy) <= r)[0]
    if ix.size == 0 or iy.size == 0:
        return None
    return slice(int(iy[0]), int(iy[-1]) + 1), slice(int(ix[0]), int(ix[-1]) + 1)


def _cell_id(i: int, j: int) -> int:
    """A stable positive id from a lattice cell (unique within ±2^20 cells)."""
    return ((int(i) + (1 << 20)) << 21) | (int(j) + (1 << 20))
