"""Run configurations (YAML): parsed into dataclasses, with errors that name the bad key.

Example (every key but ``cube`` and ``pairs`` is optional; without ``model`` a run uses the model
shipped with rtsflow, ``rtsflow/models/default``)::

    name: banks-island
    output: runs/banks-island        # the run directory
    cube: data/banks.zarr            # observation cube
    products: [data/products/*.json] # ingested first (already-present products are skipped)
    water: water                     # cube variable, or null
    reference: reference_dem         # cube variable, or null
    pairs: [[2010, 2016]]
    epoch: winter                    # or date (YYYYMMDD pairs)
    coregister: true                 # co-register the later composite per block (xDEM Nuth & Kääb + ramp)
    region: {bbox: [-120.2, 72.7, -119.0, 73.1], crs: EPSG:4326}
    model: models/rts-unetpp         # checkpoint directory (default: the shipped model)
    inference: {halo: 64, batch_size: auto, precision: auto, device: auto, dtype: uint8, compile: false,
                tta: true}               # tta: mean over each window's 8 flips and quarter turns (8x the
                                     # model's work; false: one view, faster, more false positives)
    threshold: 0.5
    filters: {min_area_m2: 1000, max_water_fraction: 0.5, max_quality_fraction: 0.5, min_max_abs_dh_m: 2,
              min_circularity: 0.2}
    grow_outlines: {k_sigma: 2, max_steps: 50, min_seed_m2: 1000}  # (the default) detections grow into the loss
                                     # ≤ −kσ around them (rtsflow.kernels.grow); false: outlines as the model draws
    correlation_length: auto         # DEM-error variogram fitted per pair on stable terrain; or a length (m)
    densities: {cell_size: [10000], sites: sites.gpkg, site_name: name}
    truth: {path: truth.parquet, where: "winter_start == 2010", min_coverage: 0.5}
    workers: {spill_directory: null, max_spill: 4GiB, memory_limit: null, profile: false}
    carbon:                          # soil organic carbon mobilised (rtsflow.carbon); `carbon: false` turns it off
      profile:                       # default: rtsflow.carbon.DEFAULT_PROFILE (Maier et al. 2025, Ellesmere)
        - {top_m: 0, bottom_m: 1, soc_kg_m3: 40, soc_sigma_kg_m3: 7, excess_ice: 0.2, excess_ice_sigma: 0.1}
        - {top_m: 1, bottom_m: .inf, bulk_density_kg_m3: 1300, carbon_fraction: 0.02}
      regions: {Fosheim: [...]}      # per site of densities.sites (by name), same layer form
      # or SOC from a map: one band per profile layer (kg C m⁻³), σ from a raster or relative
      # raster: soc.tif
      # sigma_raster: soc_sigma.tif    # or relative_sigma: 0.25
"""

from __future__ import annotations

import dataclasses
import difflib
import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from rtsflow.carbon import CarbonError, CarbonModel, profile_from_doc
from rtsflow.kernels.grow import DEFAULT_GROWTH, OutlineGrowth
from rtsflow.model.inference import DEFAULT_TTA
from rtsflow.postprocess import FilterConfig

__all__ = ["ConfigError", "Densities", "Inference", "RunConfig", "Truth", "Workers", "load_config", "parse_config"]


class ConfigError(ValueError):
    """A run configuration that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Inference:
    halo: int = 64
    batch_size: str = "auto"  # windows per batch: "auto" = 4 on CPU, from free device memory on a GPU
    precision: str = "auto"  # "auto" = bf16 autocast on a GPU, fp32 on CPU; or "fp32" / "bf16"
    device: str = "auto"
    dtype: str = "uint8"
    compile: bool = False  # torch.compile the model on each worker
    tta: bool = DEFAULT_TTA  # mean over each window's 8 flips and quarter turns (rtsflow.model.inference)

    @property
    def batch(self) -> int | None:
        """The batch size as a number, ``None`` for automatic."""
        return None if self.batch_size == "auto" else int(self.batch_size)


@dataclass(frozen=True)
class Densities:
    cell_size: tuple[float, ...] = ()
    sites: str | None = None
    site_name: str = "name"


@dataclass(frozen=True)
class Workers:
    """Where and how much Dask workers of an embedded cluster may spill (and their memory limit)."""

    spill_directory: str | None = None  # default: <run>/dask-spill (never the system temp dir)
    max_spill: str | None = "4GiB"  # per worker; beyond it a worker pauses instead of filling the disk
    memory_limit: str | None = None  # per worker; default: 80 % of the machine split between workers
    profile: bool = False  # dask's statistical profiler on the workers (dashboard "Profile"); costs memory


@dataclass(frozen=True)
class Truth:
    path: str
    where: str | None = None
    # Reference RTS with less than this share of valid dDEM (the rest under the quality mask, water or
    # outside the data) are not scored, nor are detections that hit only them (rtsflow.evaluate).
    min_coverage: float | None = None


@dataclass(frozen=True)
class Region:
    bbox: tuple[float, float, float, float]
    crs: str = "EPSG:3413"


@dataclass(frozen=True)
class RunConfig:
    """A resolved run configuration (paths absolute)."""

    cube: str
    pairs: tuple[tuple[int, int], ...]
    model: str | None = None
    name: str = "run"
    output: str = "rtsflow_run"
    products: tuple[str, ...] = ()
    water: str | None = "water"
    reference: str | None = "reference_dem"
    epoch: str = "winter"
    coregister: bool = True
    region: Region | None = None
    inference: Inference = field(default_factory=Inference)
    threshold: float = 0.5
    filters: FilterConfig = field(default_factory=FilterConfig)
    grow_outlines: OutlineGrowth | None = DEFAULT_GROWTH
    correlation_length: float | str = "auto"
    densities: Densities = field(default_factory=Densities)
    truth: Truth | None = None
    report: bool = True
    workers: Workers = field(default_factory=Workers)
    carbon: CarbonModel | None = field(default_factory=CarbonModel)

    def to_dict(self) -> dict:
        return _plain(dataclasses.asdict(self))


def _plain(v):
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    return v


def _check_keys(doc: dict, cls, where: str) -> None:
    known = [f.name for f in dataclasses.fields(cls)]
    for key in doc:
        if key not in known:
            hint = difflib.get_close_matches(str(key), known, n=1)
            extra = f" (did you mean {hint[0]!r}?)" if hint else f"; known keys: {', '.join(known)}"
            raise ConfigError(f"{where}: unknown key {key!r}{extra}")


def _typed(cls, doc: Any, where: str):
    if not isinstance(doc, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {type(doc).__name__}")
    _check_keys(doc, cls, where)
    out = {}
    for f in dataclasses.fields(cls):
        if f.name not in doc:
            continue
        v = doc[f.name]
        default = getattr(cls(**{}), f.name) if _all_defaults(cls) else None
        optional = "None" in str(f.type)  # e.g. `float | None`: null switches the setting off (a filter rule)
        if v is None and optional:
            ok = True
        elif isinstance(default, bool):
            ok = isinstance(v, bool)
        elif isinstance(default, int | float) and not isinstance(default, bool):
            ok = isinstance(v, int | float) and not isinstance(v, bool)
            v = type(default)(v) if ok and (isinstance(default, float) or float(v).is_integer()) else v
            ok = ok and isinstance(v, type(default))
        elif default is None and str(f.type).startswith("float"):  # e.g. `float | None` (an optional filter)
            ok = v is None or (isinstance(v, int | float) and not isinstance(v, bool))
            v = v if v is None or not ok else float(v)
        elif isinstance(default, str) or default is None:
            ok = v is None or isinstance(v, str | int | float)
            v = v if v is None else str(v)
        elif isinstance(default, tuple):
            v = [v] if isinstance(v, int | float | str) else v
            ok = isinstance(v, list)
            v = tuple(float(x) for x in v) if ok and f.name == "cell_size" else v
        else:
            ok = True
        if not ok:
            expected = "a number or null" if default is None else type(default).__name__
            expected += " or null" if optional and default is not None else ""
            raise ConfigError(f"{where}.{f.name}: expected {expected}, got {v!r}")
        out[f.name] = v
    return cls(**out)


def _all_defaults(cls) -> bool:
    return all(
        f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        for f in dataclasses.fields(cls)
    )


def _path(v: Any, base: Path, key: str, *, must_exist: bool = True) -> str:
    if not isinstance(v, str | Path):
        raise ConfigError(f"{key}: expected a path, got {v!r}")
    p = Path(v).expanduser()
    p = p if p.is_absolute() else base / p
    if must_exist and not p.exists():
        raise ConfigError(f"{key}: {p} does not exist")
    return str(p.resolve())


def parse_config(doc: Any, *, base: str | Path = ".", source: str = "run config") -> RunConfig:
    """Validate a configuration mapping; relative paths are resolved against ``base``."""
    base = Path(base).resolve()
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: expected a YAML mapping at the top level")
    _check_keys(doc, RunConfig, source)
    for key in ("cube", "pairs"):
        if key not in doc:
            raise ConfigError(f"{source}: missing required key {key!r}")
    kw: dict[str, Any] = {}
    kw["products"] = ()
    if doc.get("products"):
        items = doc["products"] if isinstance(doc["products"], list) else [doc["products"]]
        found: list[str] = []
        for item in items:
            pattern = str(Path(item) if Path(str(item)).is_absolute() else base / str(item))
            matches = sorted(glob.glob(pattern))
            if not matches:
                raise ConfigError(f"{source}: products: {item!r} matches no file")
            found += [str(Path(m).resolve()) for m in matches]
        kw["products"] = tuple(found)
    kw["cube"] = _path(doc["cube"], base, f"{source}: cube", must_exist=not kw["products"])
    if doc.get("model") is not None:
        kw["model"] = _path(doc["model"], base, f"{source}: model")
    pairs = doc["pairs"]
    if (
        not isinstance(pairs, list)
        or not pairs
        or not all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, int) for x in p) for p in pairs)
    ):
        raise ConfigError(f"{source}: pairs: expected a list of [earlier, later] integer pairs, got {pairs!r}")
    if any(a >= b for a, b in pairs):
        raise ConfigError(f"{source}: pairs: each pair must be [earlier, later] with earlier < later, got {pairs!r}")
    kw["pairs"] = tuple((int(a), int(b)) for a, b in pairs)
    for key in ("name", "water", "reference"):
        if key in doc:
            if doc[key] is not None and not isinstance(doc[key], str):
                raise ConfigError(f"{source}: {key}: expected a string or null, got {doc[key]!r}")
            kw[key] = doc[key]
    kw["output"] = _path(doc.get("output", "rtsflow_run"), base, f"{source}: output", must_exist=False)
    if "epoch" in doc:
        if doc["epoch"] not in ("winter", "date"):
            raise ConfigError(f"{source}: epoch: expected 'winter' or 'date', got {doc['epoch']!r}")
        kw["epoch"] = doc["epoch"]
    if doc.get("region") is not None:
        r = doc["region"]
        reg = _typed(_RegionDoc, r, f"{source}: region")
        if not (isinstance(reg.bbox, list | tuple) and len(reg.bbox) == 4):
            raise ConfigError(f"{source}: region.bbox: expected [xmin, ymin, xmax, ymax], got {reg.bbox!r}")
        kw["region"] = Region(bbox=tuple(float(v) for v in reg.bbox), crs=str(reg.crs))
    if "inference" in doc:
        inf = _typed(Inference, doc["inference"], f"{source}: inference")
        if inf.halo % 2 or inf.halo < 0:
            raise ConfigError(f"{source}: inference.halo: expected an even number of pixels, got {inf.halo}")
        if inf.precision not in ("auto", "fp32", "bf16"):
            msg = f"{source}: inference.precision: expected 'auto', 'fp32' or 'bf16', got {inf.precision!r}"
            raise ConfigError(msg)
        if inf.batch_size != "auto" and not (inf.batch_size.isdigit() and int(inf.batch_size) > 0):
            msg = f"{source}: inference.batch_size: expected 'auto' or a positive integer, got {inf.batch_size!r}"
            raise ConfigError(msg)
        if inf.dtype not in ("uint8", "float16"):
            raise ConfigError(f"{source}: inference.dtype: expected 'uint8' or 'float16', got {inf.dtype!r}")
        kw["inference"] = inf
    if doc.get("correlation_length") == "auto":
        kw["correlation_length"] = "auto"
    elif "correlation_length" in doc:
        v = doc["correlation_length"]
        if not isinstance(v, int | float) or isinstance(v, bool) or not v > 0:
            raise ConfigError(f"{source}: correlation_length: expected 'auto' or a length > 0 (m), got {v!r}")
        kw["correlation_length"] = float(v)
    for key in ("threshold",):
        if key in doc:
            v = doc[key]
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise ConfigError(f"{source}: {key}: expected a number, got {v!r}")
            kw[key] = float(v)
    if not 0 < kw.get("threshold", 0.5) < 1:
        raise ConfigError(f"{source}: threshold: expected a probability in (0, 1), got {kw['threshold']}")
    if "filters" in doc:
        kw["filters"] = _typed(FilterConfig, doc["filters"], f"{source}: filters")
    if doc.get("grow_outlines", True) in (None, False):  # false / null: the outlines as the model draws them
        kw["grow_outlines"] = None
    elif "grow_outlines" in doc:
        g = doc["grow_outlines"]
        try:
            kw["grow_outlines"] = _typed(OutlineGrowth, {} if g is True else g, f"{source}: grow_outlines")
        except ConfigError:
            raise
        except ValueError as e:  # the dataclass's own range checks name the key
            raise ConfigError(f"{source}: {e}") from None
    if "densities" in doc:
        d = _typed(Densities, doc["densities"], f"{source}: densities")
        if d.sites:
            d = dataclasses.replace(d, sites=_path(d.sites, base, f"{source}: densities.sites"))
        kw["densities"] = d
    if doc.get("truth") is not None:
        t = doc["truth"]
        if isinstance(t, str):
            t = {"path": t}
        _check_keys(t, Truth, f"{source}: truth")
        path = _path(t.get("path"), base, f"{source}: truth.path")
        truth = _typed(Truth, {**t, "path": path}, f"{source}: truth")  # types, as for every other section
        if truth.min_coverage is not None and not 0 <= truth.min_coverage <= 1:
            raise ConfigError(f"{source}: truth.min_coverage: expected a share between 0 and 1, "
                              f"got {truth.min_coverage!r}")  # fmt: skip
        kw["truth"] = truth
    if "workers" in doc:
        w = _typed(Workers, doc["workers"], f"{source}: workers")
        for key in ("max_spill", "memory_limit"):
            value = getattr(w, key)
            if value is not None:
                try:
                    _bytes(value)
                except ValueError:
                    msg = f"{source}: workers.{key}: expected a size such as '4GiB', got {value!r}"
                    raise ConfigError(msg) from None
        if w.spill_directory:
            where = f"{source}: workers.spill_directory"
            w = dataclasses.replace(w, spill_directory=_path(w.spill_directory, base, where, must_exist=False))
        kw["workers"] = w
    if "carbon" in doc:
        kw["carbon"] = _carbon(doc["carbon"], source=source, sites=kw.get("densities", Densities()).sites, base=base)
    for key in ("report", "coregister"):
        if key in doc:
            if not isinstance(doc[key], bool):
                raise ConfigError(f"{source}: {key}: expected true or false, got {doc[key]!r}")
            kw[key] = doc[key]
    return RunConfig(**kw)


def _carbon(doc: Any, *, source: str, sites: str | None, base: Path) -> CarbonModel | None:
    if doc is False or doc is None:
        return None
    if doc is True:
        return CarbonModel()
    if not isinstance(doc, dict):
        raise ConfigError(f"{source}: carbon: expected a mapping (profile, regions, raster) or false, got {doc!r}")
    _check_keys(doc, _CarbonDoc, f"{source}: carbon")
    try:
        model = CarbonModel()
        if doc.get("profile") is not None:
            model = CarbonModel(profile=profile_from_doc(doc["profile"], where=f"{source}: carbon.profile"))
        if doc.get("regions"):
            if not isinstance(doc["regions"], dict):
                raise ConfigError(f"{source}: carbon.regions: expected a mapping of site name to layers")
            if not sites:
                raise ConfigError(f"{source}: carbon.regions: needs densities.sites (the sites they name)")
            regions = {str(k): profile_from_doc(v, where=f"{source}: carbon.regions.{k}")
                       for k, v in doc["regions"].items()}  # fmt: skip
            model = CarbonModel(profile=model.profile, regions=regions)
        if doc.get("raster") is not None:
            from rtsflow.io.soc_raster import SocRaster

            where = f"{source}: carbon"
            if doc.get("regions"):
                raise ConfigError(f"{where}: give SOC per region (regions) or from a map (raster), not both")
            rel = doc.get("relative_sigma", 0.0)
            if not isinstance(rel, int | float) or isinstance(rel, bool):
                raise ConfigError(f"{where}.relative_sigma: expected a number, got {rel!r}")
            if doc.get("sigma_raster") is not None and "relative_sigma" in doc:
                raise ConfigError(f"{where}: give sigma_raster or relative_sigma, not both")
            raster = SocRaster(
                path=_path(doc["raster"], base, f"{where}.raster"),
                sigma_path=_path(doc["sigma_raster"], base, f"{where}.sigma_raster")
                if doc.get("sigma_raster") is not None else None,
                relative_sigma=float(rel),
            )  # fmt: skip
            raster.check(n_layers=len(model.profile.layers), where=where)
            model = CarbonModel(profile=model.profile, raster=raster)
        elif "sigma_raster" in doc or "relative_sigma" in doc:
            raise ConfigError(f"{source}: carbon: sigma_raster/relative_sigma need a raster")
    except CarbonError as e:
        raise ConfigError(str(e)) from None
    return model


@dataclass(frozen=True)
class _CarbonDoc:
    profile: Any = None
    regions: Any = None
    raster: Any = None
    sigma_raster: Any = None
    relative_sigma: Any = None


def _bytes(value: str) -> int:
    from dask.utils import parse_bytes

    return int(parse_bytes(value))


@dataclass(frozen=True)
class _RegionDoc:
    bbox: tuple = ()
    crs: str = "EPSG:3413"


def load_config(path: str | Path, **overrides) -> RunConfig:
    """Read and validate a YAML run configuration (paths relative to the file's folder)."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: no such run configuration")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML ({e})") from e
    doc = {**(doc or {}), **{k: v for k, v in overrides.items() if v is not None}}
    return parse_config(doc, base=path.parent, source=str(path))
