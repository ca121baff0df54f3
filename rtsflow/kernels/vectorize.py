"""Raster regions → polygons, per block, and the pure logic that stitches blocks together.

Regions are 4-connected (pixels sharing an edge), which is what
``rasterio.features.shapes`` traces, so a block-by-block result stitched here
equals vectorising the whole raster at once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import shapely
from affine import Affine
from scipy import ndimage

from rtsflow.kernels import gdal

__all__ = ["BlockPieces", "stitch", "vectorize_block"]

_FOUR = ndimage.generate_binary_structure(2, 1)


@dataclass
class BlockPieces:
    """Polygons of one block: ``interior`` ones are final, ``edge`` ones may continue next door.

    ``edges`` holds, for each side (``top``, ``bottom``, ``left``, ``right``), the
    piece label of every pixel on that side (0 = none); labels index ``edge``.
    """

    block: tuple[int, int]
    interior: list[shapely.Geometry] = field(default_factory=list)
    edge: dict[int, shapely.Geometry] = field(default_factory=dict)
    edges: dict[str, np.ndarray] = field(default_factory=dict)


def vectorize_block(mask: np.ndarray, *, transform: Affine, block: tuple[int, int]) -> BlockPieces:
    """Trace the 4-connected regions of a boolean block into polygons.

    Parameters
    ----------
    mask
        True inside regions (e.g. probability ≥ threshold).
    transform
        Geotransform of the block.
    block
        (block_row, block_col), kept for stitching.
    """
    mask = np.asarray(mask, dtype=bool)
    labels, n = ndimage.label(mask, structure=_FOUR)
    out = BlockPieces(block=block)
    if n == 0:
        out.edges = {k: np.zeros(v, np.int32) for k, v in _side_lengths(mask.shape).items()}
        return out
    sides = {"top": labels[0, :], "bottom": labels[-1, :], "left": labels[:, 0], "right": labels[:, -1]}
    on_edge = np.zeros(n + 1, dtype=bool)
    for v in sides.values():
        on_edge[v] = True
    on_edge[0] = False
    geoms: dict[int, list] = {}
    # Serialised: rasterio's tracing is not thread-safe (see rtsflow.kernels.gdal).
    for geom, value in gdal.shapes(labels.astype(np.int32), mask=mask, connectivity=4, transform=transform):
        geoms.setdefault(int(value), []).append(shapely.geometry.shape(geom))
    for lab, parts in geoms.items():
        g = parts[0] if len(parts) == 1 else shapely.union_all(parts)
        if on_edge[lab]:
            out.edge[lab] = g
        else:
            out.interior.append(g)
    out.edges = {k: v.astype(np.int32) for k, v in sides.items()}
    return out


def _side_lengths(shape: tuple[int, int]) -> dict[str, int]:
    return {"top": shape[1], "bottom": shape[1], "left": shape[0], "right": shape[0]}


def stitch(pieces: list[BlockPieces]) -> list[tuple[shapely.Geometry, list[tuple[int, int]]]]:
    """Merge edge pieces that are 4-connected across block boundaries.

    Returns
    -------
    list of ``(polygon, blocks it spans)``, interior polygons included.
    """
    by_block = {p.block: p for p in pieces}
    parent: dict[tuple, tuple] = {}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    def union(a, b):
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)

    for p in pieces:
        for lab in p.edge:
            parent[(p.block, lab)] = (p.block, lab)
    for (br, bc), p in by_block.items():
        for nb, mine, theirs in (((br, bc + 1), "right", "left"), ((br + 1, bc), "bottom", "top")):
            q = by_block.get(nb)
            if q is None:
                continue
            a, b = p.edges[mine], q.edges[theirs]
            both = (a > 0) & (b > 0)
            for la, lb in set(zip(a[both].tolist(), b[both].tolist(), strict=True)):
                union((p.block, la), (q.block, lb))
    groups: dict[tuple, list[tuple]] = {}
    for key in parent:
        groups.setdefault(find(key), []).append(key)
    out = []
    for p in pieces:
        out.extend((g, [p.block]) for g in p.interior)
    for members in groups.values():
        geoms = [by_block[blk].edge[lab] for blk, lab in members]
        merged = geoms[0] if len(geoms) == 1 else shapely.union_all(geoms)
        out.append((merged, sorted({blk for blk, _ in members})))
    return out
