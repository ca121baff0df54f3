"""Bring cubes written by older rtsflow up to the current layout, losslessly.

rtsflow ≤ 0.2 stored the text coordinates of a cube (``product_id``, ``kind``,
``sensor``, …) as fixed-length UTF-32, a Zarr v3 data type without a
specification (zarr warns about it on every write). They are rewritten as
variable-length UTF-8 strings (the ``string`` data type): each array is
written beside the old one, read back and compared value by value, and only
then swapped in (directory renames), so a failure leaves the old array.
"""

from __future__ import annotations

import shutil
import uuid
from pathlib import Path

import zarr

__all__ = ["fixed_length_strings", "migrate_cube"]


def fixed_length_strings(path: str | Path) -> list[str]:
    """Names of the arrays of a cube that hold fixed-length (UTF-32) strings."""
    group = zarr.open_group(str(path), mode="r", zarr_format=3)
    return sorted(name for name, arr in group.arrays() if arr.dtype.kind == "U")


def migrate_cube(path: str | Path) -> list[str]:
    """Rewrite a cube's fixed-length string arrays as variable-length strings; return their names.

    Raises
    ------
    RuntimeError
        If a rewritten array does not read back equal (the old one is kept).
    """
    path = Path(path)
    names = fixed_length_strings(path)
    group = zarr.open_group(str(path), mode="r+", zarr_format=3)
    for name in names:
        old = group[name]
        values = old[...]
        tmp = f".{name}.migrating-{uuid.uuid4().hex[:8]}"
        new = group.create_array(tmp, shape=old.shape, dtype=str, chunks=old.chunks,
                                 dimension_names=old.metadata.dimension_names,
                                 attributes=dict(old.attrs), fill_value="")  # fmt: skip
        new[...] = values.astype(object)
        back = zarr.open_array(str(path / tmp), mode="r", zarr_format=3)[...]
        if back.shape != values.shape or [str(v) for v in back.ravel()] != [str(v) for v in values.ravel()]:
            shutil.rmtree(path / tmp, ignore_errors=True)
            raise RuntimeError(f"{path}/{name}: the rewritten strings do not read back equal; the cube is unchanged")
        aside = path / f".{name}.old-{uuid.uuid4().hex[:8]}"
        (path / name).rename(aside)
        (path / tmp).rename(path / name)
        shutil.rmtree(aside)
    return names
