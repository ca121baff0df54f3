"""The product format users bring: one JSON sidecar per observation naming its rasters.

A product is one elevation observation. Two kinds exist:

``insar``
    A TanDEM-X-style InSAR DEM: ``dem`` (m) and ``coherence`` (0-1) rasters,
    optional ``layover_shadow`` (1 = layover or shadow, 0 = clear) and
    ``incidence`` (local incidence angle, radians) rasters, and the height of
    ambiguity ``hoa_m`` in the sidecar.
``dem``
    A DEM-only product (e.g. an ArcticDEM strip): ``dem`` and an optional
    per-pixel 1-sigma error raster ``sigma`` (m); no coherence, no HoA.

Sidecar example (paths are relative to the sidecar)::

    {
      "id": "TDX_2010-11-05_A",
      "acquired": "2010-11-05T12:31:07Z",
      "sensor": "TanDEM-X",
      "orbit": "ascending",
      "hoa_m": 42.3,
      "dem": "TDX_2010-11-05_A_dem.tif",
      "coherence": "TDX_2010-11-05_A_coherence.tif",
      "layover_shadow": "TDX_2010-11-05_A_layover_shadow.tif",
      "incidence": "TDX_2010-11-05_A_incidence.tif"
    }

This module parses and checks the sidecar only; pixel checks live in
:mod:`rtsflow.io.rasters`.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "RASTER_KEYS",
    "Product",
    "ProductError",
    "read_product",
    "write_sidecar",
]

#: Raster layers a sidecar may name, in cube order.
RASTER_KEYS = ("dem", "coherence", "layover_shadow", "incidence", "sigma")
_ORBITS = ("ascending", "descending", "unknown")
_KNOWN_KEYS = {"id", "acquired", "sensor", "orbit", "hoa_m", "kind", "description", *RASTER_KEYS}


class ProductError(ValueError):
    """A product that cannot be ingested, naming the file and field at fault."""

    def __init__(self, path: str | Path, field: str | None, problem: str) -> None:
        self.path = str(path)
        self.field = field
        self.problem = problem
        where = f"{self.path}: field '{field}'" if field else self.path
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # travels between dask worker processes intact
        return (type(self), (self.path, self.field, self.problem))


@dataclass(frozen=True)
class Product:
    """One observation as described by its sidecar.

    Attributes
    ----------
    id
        Unique product id (the cube refuses a second product with this id and
        different content).
    kind
        ``"insar"`` (has coherence and HoA) or ``"dem"`` (DEM-only).
    acquired
        Acquisition time, UTC, as ``numpy.datetime64[s]``.
    hoa
        Height of ambiguity in metres (NaN for DEM-only products).
    orbit, sensor
        Orbit direction and sensor name.
    rasters
        Absolute paths of the raster layers present.
    sidecar
        Absolute path of the sidecar JSON.
    """

    id: str
    kind: str
    acquired: np.datetime64
    hoa: float
    orbit: str
    sensor: str
    rasters: dict[str, Path] = field(hash=False)
    sidecar: Path

    def content_hash(self) -> str:
        """sha256 over the sidecar's metadata and the bytes of every raster.

        Used to make ingest idempotent: the same id with the same hash is
        skipped, the same id with another hash is refused.
        """
        h = hashlib.sha256()
        meta = {
            "id": self.id,
            "kind": self.kind,
            "acquired": str(self.acquired),
            "hoa": None if math.isnan(self.hoa) else self.hoa,
            "orbit": self.orbit,
            "sensor": self.sensor,
            "layers": sorted(self.rasters),
        }
        h.update(json.dumps(meta, sort_keys=True).encode())
        for key in sorted(self.rasters):
            h.update(key.encode())
            with open(self.rasters[key], "rb") as f:
                for chunk in iter(lambda: f.read(1 << 22), b""):
                    h.update(chunk)
        return h.hexdigest()


def read_product(sidecar: str | Path) -> Product:
    """Parse and check a product sidecar.

    Parameters
    ----------
    sidecar
        Path of the JSON sidecar.

    Returns
    -------
    Product

    Raises
    ------
    ProductError
        Naming the sidecar (or raster) and field that is missing or wrong.
    """
    path = Path(sidecar).resolve()
    try:
        text = path.read_text()
    except OSError as e:
        raise ProductError(path, None, f"cannot read sidecar ({e.strerror or e})") from e
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProductError(path, None, f"not valid JSON ({e})") from e
    if not isinstance(doc, dict):
        raise ProductError(path, None, "expected a JSON object")
    unknown = sorted(set(doc) - _KNOWN_KEYS)
    if unknown:
        raise ProductError(path, unknown[0], f"unknown key; expected one of {sorted(_KNOWN_KEYS)}")

    pid = doc.get("id")
    if not isinstance(pid, str) or not pid.strip():
        raise ProductError(path, "id", f"expected a non-empty string, got {pid!r}")

    acquired = _parse_time(path, doc.get("acquired"))

    rasters: dict[str, Path] = {}
    for key in RASTER_KEYS:
        value = doc.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value:
            raise ProductError(path, key, f"expected a GeoTIFF path, got {value!r}")
        p = Path(value)
        rasters[key] = (p if p.is_absolute() else path.parent / p).resolve()
    if "dem" not in rasters:
        raise ProductError(path, "dem", "missing; every product needs a DEM GeoTIFF")

    kind = "insar" if "coherence" in rasters else "dem"
    if "kind" in doc and doc["kind"] != kind:
        raise ProductError(path, "kind", f"says {doc['kind']!r} but the rasters make it a {kind!r} product")
    if kind == "dem":
        for key in ("layover_shadow", "incidence"):
            if key in rasters:
                raise ProductError(path, key, "only InSAR products (with coherence) carry this layer")

    hoa = doc.get("hoa_m")
    if kind == "insar":
        if hoa is None:
            raise ProductError(path, "hoa_m", "missing; InSAR products need the height of ambiguity (m)")
        if isinstance(hoa, bool) or not isinstance(hoa, int | float) or not math.isfinite(hoa) or hoa <= 0:
            raise ProductError(path, "hoa_m", f"expected a positive number of metres, got {hoa!r}")
        hoa = float(hoa)
    else:
        if hoa is not None:
            raise ProductError(path, "hoa_m", "a DEM-only product (no coherence) has no height of ambiguity")
        hoa = math.nan

    orbit = doc.get("orbit", "unknown")
    if orbit not in _ORBITS:
        raise ProductError(path, "orbit", f"expected one of {list(_ORBITS)}, got {orbit!r}")
    sensor = doc.get("sensor", "unknown")
    if not isinstance(sensor, str) or not sensor:
        raise ProductError(path, "sensor", f"expected a non-empty string, got {sensor!r}")

    return Product(
        id=pid.strip(),
        kind=kind,
        acquired=acquired,
        hoa=hoa,
        orbit=orbit,
        sensor=sensor,
        rasters=rasters,
        sidecar=path,
    )


def write_sidecar(
    path: str | Path,
    *,
    id: str,
    acquired: str | np.datetime64,
    dem: str | Path,
    coherence: str | Path | None = None,
    layover_shadow: str | Path | None = None,
    incidence: str | Path | None = None,
    sigma: str | Path | None = None,
    hoa_m: float | None = None,
    orbit: str = "unknown",
    sensor: str = "unknown",
) -> Path:
    """Write a product sidecar (raster paths are stored relative to it when possible).

    Returns the sidecar path. The sidecar is checked by :func:`read_product`
    after writing, so a bad call fails here, not at ingest.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = {
        "id": id,
        "acquired": _format_time(acquired),
        "sensor": sensor,
        "orbit": orbit,
    }
    if hoa_m is not None:
        doc["hoa_m"] = float(hoa_m)
    layers = {
        "dem": dem,
        "coherence": coherence,
        "layover_shadow": layover_shadow,
        "incidence": incidence,
        "sigma": sigma,
    }
    for key, value in layers.items():
        if value is not None:
            doc[key] = _relative(Path(value), path.parent)
    path.write_text(json.dumps(doc, indent=2) + "\n")
    read_product(path)
    return path


def _relative(p: Path, base: Path) -> str:
    try:
        return str(p.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p.resolve())


def _parse_time(path: Path, value: Any) -> np.datetime64:
    if not isinstance(value, str) or not value:
        raise ProductError(path, "acquired", f"expected an ISO 8601 UTC time, got {value!r}")
    text = value.strip()
    # numpy parses naive ISO strings; accept an explicit UTC designator only.
    for suffix in ("Z", "+00:00", "+0000"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
            break
    else:
        if "+" in text[10:] or text[10:].count("-") > 0:
            raise ProductError(path, "acquired", f"expected UTC ('Z' or no offset), got {value!r}")
    try:
        t = np.datetime64(text, "s")
    except ValueError as e:
        raise ProductError(path, "acquired", f"expected an ISO 8601 UTC time, got {value!r}") from e
    if np.isnat(t):
        raise ProductError(path, "acquired", f"expected an ISO 8601 UTC time, got {value!r}")
    return t


def _format_time(t: str | np.datetime64) -> str:
    if isinstance(t, str):
        t = t.strip().removesuffix("Z").removesuffix("+00:00")
    return str(np.datetime64(t, "s")) + "Z"
