"""Detected RTS grown into the significant elevation loss they are part of (pure NumPy).

The model often outlines only part of a large slump (its toe, or a rim around a deep
floor): the loss it leaves out is as clear in the dDEM as the part it found. Each
detected region of at least ``min_seed_px`` pixels grows, through 4-connected pixels,
into the loss of at least ``k_sigma`` dDEM σ around it, up to ``max_steps`` pixels
away. Growth only adds pixels to regions that pass the area rule already: it makes no
new detections, so it moves outlines, areas and volumes, not detection counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["DEFAULT_GROWTH", "OutlineGrowth", "grow_detections", "growth_halo_px"]

_FOUR = ndimage.generate_binary_structure(2, 1)


@dataclass(frozen=True)
class OutlineGrowth:
    """How detected regions grow into significant loss (a run config's ``grow_outlines``).

    Parameters
    ----------
    k_sigma
        A pixel can join when ``ddem_norm ≤ −k_sigma`` (a loss of at least k dDEM σ).
    max_steps
        Farthest a region grows, in pixels along the joined loss (50 at 10 m: 500 m, longer
        than the largest slumps' scars).
    min_seed_m2
        Only regions of at least this area grow (the post-processing's minimum area, so
        that specks of probability never turn into detections).
    """

    k_sigma: float = 2.0
    max_steps: int = 50
    min_seed_m2: float = 1000.0

    def __post_init__(self) -> None:
        if not self.k_sigma > 0:
            raise ValueError(f"grow_outlines.k_sigma: expected a positive number of σ, got {self.k_sigma}")
        if not (isinstance(self.max_steps, int) and self.max_steps >= 1):
            raise ValueError(f"grow_outlines.max_steps: expected a whole number ≥ 1, got {self.max_steps}")
        if not self.min_seed_m2 >= 0:
            raise ValueError(f"grow_outlines.min_seed_m2: expected an area ≥ 0, got {self.min_seed_m2}")

    def min_seed_px(self, *, resolution: float) -> int:
        return max(1, int(np.ceil(self.min_seed_m2 / resolution**2)))


DEFAULT_GROWTH = OutlineGrowth()  # what runs, ``rtsflow reduce`` and ``detect_rts`` use unless told otherwise


def growth_halo_px(growth: OutlineGrowth, *, resolution: float) -> int:
    """Context a block needs for growth equal to the whole raster's.

    A pixel can be reached from seeds up to ``max_steps`` away, and whether a region is a seed
    depends on its size: a region that reaches ``min_seed_px`` past that is at least that big.
    """
    return growth.max_steps + growth.min_seed_px(resolution=resolution)


def grow_detections(
    detected: np.ndarray, ddem_norm: np.ndarray, *, growth: OutlineGrowth, resolution: float
) -> np.ndarray:
    """``detected`` (bool) with its regions of at least ``min_seed_px`` grown into the loss ≤ −k σ.

    NaN in ``ddem_norm`` (no valid dDEM) never joins.
    """
    detected = np.asarray(detected, dtype=bool)
    labels, n = ndimage.label(detected, structure=_FOUR)
    if n == 0:
        return detected
    big = np.bincount(labels.ravel()) >= growth.min_seed_px(resolution=resolution)
    big[0] = False
    seeds = big[labels]
    if not seeds.any():
        return detected
    with np.errstate(invalid="ignore"):
        loss = np.asarray(ddem_norm) <= -growth.k_sigma  # NaN compares False
    # Geodesic dilation: each step adds the loss pixels next to the region, at most max_steps times.
    grown = ndimage.binary_dilation(seeds, structure=_FOUR, iterations=growth.max_steps, mask=loss | seeds)
    return grown | detected
