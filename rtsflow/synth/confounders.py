"""Hard negatives for the detector: elevation changes that are not thaw slumps (pure NumPy).

Each kind changes the ground between epochs in a way a dDEM confuses with an
RTS, and each is drawn with sizes from the literature:

- ``gully``: a narrow channel cut downslope that extends headward between
  epochs (widths 3–12 m, depths 0.5–3 m, headward growth 10–80 m per period;
  thermo-erosion gullies, Godin & Fortier 2012).
- ``bank``: river-bank erosion or coastal retreat: a strip along a bank line
  that retreats 5–30 m with a 1.5–6 m step (Arctic coasts retreat ~0.5–2 m/yr,
  locally > 10 m/yr; Lantuit et al. 2012).
- ``snow``: a snow drift in the lee of a slope in some winters, not others:
  a smooth ±0.5–2.5 m patch of 80–400 m (winter TanDEM-X acquisitions see the
  snow surface; drift depths of metres, Sturm & Holmgren 2018).
- ``spoil``: a spoil heap or gravel pad built between epochs (+1–5 m, 12–40 m).
- ``ice``: an ice-cored moraine or glacier margin thinning 0.5–2 m/yr over
  0.2–1.5 km (smooth, large; Maier et al. 2025 mask glaciers, small ones slip
  through).

Lakes (drained and stable) and round pits are in :mod:`rtsflow.synth.scene`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import shapely

from rtsflow.synth.fields import bump

__all__ = ["KINDS", "Confounder", "make_confounder"]

KINDS = ("gully", "bank", "snow", "spoil", "ice")


@dataclass(frozen=True)
class Confounder:
    """One hard negative: a shape (centre, direction, length, width) and its change per epoch.

    ``amount[e]`` is the kind's state at epoch index ``e`` (gully/bank: how far it has grown in m; snow:
    drift thickness in m, signed; spoil: height in m; ice: thinning in m, positive = lower).
    """

    kind: str
    id: int
    x: float
    y: float
    direction: tuple[float, float]  # unit vector: downslope (gully), across the bank (bank), long axis (others)
    length: float
    width: float
    depth: float
    amount: tuple[float, ...]
    onset: int
    priority: float = field(default=0.0, compare=False)

    @property
    def radius(self) -> float:
        """Distance from the centre beyond which nothing changes."""
        return 0.5 * math.hypot(self.length, self.width) + max((abs(a) for a in self.amount), default=0.0) + 2.0

    @property
    def reach(self) -> float:
        return self.radius + 10.0

    def _frame(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(along, across) in metres from the centre, along = ``direction``."""
        dx, dy = self.direction
        px, py = x[None, :] - self.x, y[:, None] - self.y
        return px * dx + py * dy, -px * dy + py * dx

    def elevation_change(self, x: np.ndarray, y: np.ndarray, epoch: int) -> np.ndarray:
        """Change (m) relative to the ground without the object, at epoch index ``epoch``."""
        a = self.amount[epoch]
        if a == 0:
            return np.zeros((y.size, x.size))
        u, v = self._frame(x, y)
        if self.kind == "gully":
            # u runs downslope: the channel spans from its mouth (u = length/2) up to its head at
            # u = length/2 − a, which moves upslope as ``a`` grows.
            head = self.length / 2 - a
            along = np.clip((u - head) / 4.0, 0.0, 1.0) * (u <= self.length / 2)
            return -self.depth * along * bump((v / (self.width / 2)) ** 2, 0.5)  # U-shaped cross-section
        if self.kind == "bank":
            # The bank line runs along ``across``; ground on the land side (u < 0) within ``a`` is lost.
            band = (u <= 0) & (u > -a) & (np.abs(v) <= self.length / 2)
            taper = np.clip((self.length / 2 - np.abs(v)) / 15.0, 0.0, 1.0)
            return -self.depth * band * taper
        r2 = (u / (self.length / 2)) ** 2 + (v / (self.width / 2)) ** 2
        if self.kind == "snow":
            return a * bump(r2, 1.0)
        if self.kind == "spoil":
            return a * bump(r2, 0.5)
        if self.kind == "ice":
            return -a * bump(r2, 1.0)
        raise ValueError(f"unknown confounder kind {self.kind!r}")

    def outline(self, epoch: int) -> shapely.Geometry:
        """Where it changes the ground at epoch index ``epoch`` (EPSG:3413), for the truth table."""
        dx, dy = self.direction
        a = abs(self.amount[epoch])

        def world(u, v):
            u, v = np.asarray(u, float), np.asarray(v, float)
            return np.column_stack([self.x + u * dx - v * dy, self.y + u * dy + v * dx])

        if self.kind == "gully":
            head = self.length / 2 - a
            return shapely.LineString(world([head, self.length / 2], [0, 0])).buffer(self.width / 2)
        if self.kind == "bank":
            return shapely.Polygon(world([0, -a, -a, 0], [-self.length / 2, -self.length / 2, self.length / 2,
                                                          self.length / 2]))  # fmt: skip
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return shapely.Polygon(world(self.length / 2 * np.cos(t), self.width / 2 * np.sin(t)))


def make_confounder(rng: np.random.Generator, *, id: int, x: float, y: float, priority: float, n_epochs: int,
                    gradient: tuple[float, float]) -> Confounder | None:  # fmt: skip
    """Draw one hard negative at ``(x, y)`` (kind, size, change per epoch) given the ground's gradient there."""
    kind = KINDS[int(rng.integers(len(KINDS)))]
    gx, gy = gradient
    slope = math.hypot(gx, gy)
    downslope = (-gx / slope, -gy / slope) if slope > 1e-6 else (1.0, 0.0)
    onset = int(rng.integers(1, n_epochs)) if n_epochs > 1 else 0
    growth = [0.0] * n_epochs
    if kind == "gully":
        if slope < math.tan(math.radians(1.0)):
            return None  # gullies cut slopes
        length, width, depth = rng.uniform(80, 400), rng.uniform(3, 12), rng.uniform(0.5, 3.0)
        reach = rng.uniform(0.4, 0.8) * length  # the gully already exists at epoch onset − 1
        for e in range(onset - 1, n_epochs):
            growth[e] = reach
            reach = min(length, reach + rng.uniform(10, 80))
        return Confounder(kind, id, x, y, downslope, length, width, depth, tuple(growth), max(onset - 1, 0), priority)
    if kind == "bank":
        length, depth = rng.uniform(200, 800), rng.uniform(1.5, 6.0)
        ang = rng.uniform(0, 2 * np.pi)
        for e in range(onset, n_epochs):
            growth[e] = (growth[e - 1] if e else 0.0) + rng.uniform(5, 30)
        return Confounder(kind, id, x, y, (math.cos(ang), math.sin(ang)), length, 0.0, depth, tuple(growth), onset,
                          priority)  # fmt: skip
    if kind == "snow":
        # Lee-side drifts lie across the slope; present (and deeper or shallower) in some winters only.
        length, width = rng.uniform(80, 400), rng.uniform(40, 150)
        across = (-downslope[1], downslope[0])
        amount = tuple(float(rng.uniform(0.5, 2.5)) if rng.random() < 0.5 else 0.0 for _ in range(n_epochs))
        if not any(amount):
            amount = (0.0,) * (n_epochs - 1) + (float(rng.uniform(0.5, 2.5)),)
        return Confounder(kind, id, x, y, across, length, width, 0.0, amount, 0, priority)
    if kind == "spoil":
        r = rng.uniform(12, 40)
        height = rng.uniform(1.0, 5.0)
        amount = tuple(height if e >= onset else 0.0 for e in range(n_epochs))
        return Confounder(kind, id, x, y, (1.0, 0.0), 2 * r, 2 * r * rng.uniform(0.6, 1.0), 0.0, amount, onset,
                          priority)  # fmt: skip
    # ice: thinning accumulates over the epochs (index as a year proxy: 1–6 m per period)
    length, width = rng.uniform(200, 1500), rng.uniform(150, 800)
    per_period = rng.uniform(1.0, 6.0)
    ang = rng.uniform(0, np.pi)
    amount = tuple(per_period * e for e in range(n_epochs))
    return Confounder(kind, id, x, y, (math.cos(ang), math.sin(ang)), length, min(width, length), 0.0, amount, 1,
                      priority)  # fmt: skip
