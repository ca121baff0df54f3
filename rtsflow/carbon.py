"""Soil organic carbon mobilised by thaw slumps, from their volume loss by depth, with propagated σ.

Each RTS's loss volume is split by depth below the old surface into layers
(``loss_0_1m_m3``, ``loss_1_2m_m3``, ``loss_2_3m_m3``, ``loss_below_3m_m3``
of the RTS table, as in Maier et al. 2025). The carbon of a layer is

    C_l = V_l · ρ_l · (1 − e_l)

with ρ_l the soil-organic-carbon density of the layer (kg C per m³ of
ice-free ground; or bulk density × carbon mass fraction) and e_l its
excess-ice volume fraction (excess ice carries no carbon). An RTS mobilises
C = Σ_l C_l; a zone (grid cell, site, region) the sum over its RTS.

Uncertainty
-----------
Three independent sources, combined exactly (no linearisation) for
independent variables, so a Monte Carlo of the same assumptions agrees:

- the RTS's volume error, as one relative error ε of its loss, σ_ε =
  ``volume_sigma_m3 / |loss_m3|`` (the dDEM error is spatially correlated, so
  it scales all layers of one RTS together); independent between RTS;
- the SOC density of each layer (σ_ρ) and
- its excess-ice fraction (σ_e), independent between layers; the *same*
  parameter values apply to every RTS of a profile, so their error does not
  average out over a region.

With g_l = ρ_l (1 − e_l): E g_l = μ_ρ (1 − μ_e), Var g_l = μ_ρ² σ_e² +
(1 − μ_e)² σ_ρ² + σ_ρ² σ_e²; for a zone with layer volumes W_{p,l} summed over
its RTS using profile p, Var C = Σ_{p,l} W_{p,l}² Var g_{p,l} +
Σ_r σ_ε,r² E[(Σ_l V_{r,l} g_{p(r),l})²].

The default profile is derived from the Maier et al. 2025 Ellesmere
reference polygons (``../shared/data/maier2025_ellesmere``, 279 RTS, TP1):
per layer, the median over polygons of their ``soc*`` attribute divided by
their loss volume in that layer over the period, and σ from the 5–95 %
spread (/3.29). Those attributes come from a spatially varying SOC map, so a
single profile reproduces the regional total, not each RTS (benchmarks/RESULTS.md).
Excess ice defaults to 0 (Maier et al. report 40 % and 80 % scenarios; set
``excess_ice`` to use one).

SOC from a map
--------------
With a :class:`~rtsflow.io.soc_raster.SocRaster` (one band per layer of the
profile) each RTS takes ρ_l and σ_ρ,l at its centroid instead of the
profile's (kept in the RTS table as ``soc_*_kg_m3`` columns; ``soc_source``
says which RTS fell back to the profile). A map's error is spatially
correlated, so it is treated like a profile's: one standard-normal error per
layer shared by every RTS, ρ_{r,l} = μ_{r,l} + σ_{r,l} z_l. For a zone with
A_l = Σ_r V_{r,l} μ_{r,l} and B_l = Σ_r V_{r,l} σ_{r,l}, the parameter part of
Var C is Σ_l (1 − μ_e)² B_l² + σ_e² (A_l² + B_l²), which is the formula above
when μ and σ are the same for every RTS.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rtsflow.kernels.zonal import DEPTH_LAYERS

if TYPE_CHECKING:
    from rtsflow.io.soc_raster import SocRaster

__all__ = [
    "DEFAULT_PROFILE",
    "CarbonError",
    "CarbonModel",
    "SocLayer",
    "SocProfile",
    "add_carbon",
    "loss_layer_columns",
    "rts_carbon",
    "soc_columns",
    "zone_carbon",
]

KG_PER_PG = 1e12


class CarbonError(ValueError):
    """A carbon parameter that cannot be used; the message names it."""


def loss_layer_columns() -> list[tuple[float, float, str]]:
    """``(top, bottom, column)`` of the RTS table's loss-by-depth columns."""
    out = []
    for top, bottom in DEPTH_LAYERS:
        name = f"loss_{top:g}_{bottom:g}m_m3" if np.isfinite(bottom) else f"loss_below_{top:g}m_m3"
        out.append((top, bottom, name))
    return out


@dataclass(frozen=True)
class SocLayer:
    """Carbon in one depth layer below the old ground surface.

    Parameters
    ----------
    top_m, bottom_m
        Depth range (m); ``bottom_m = inf`` for the open-ended deepest layer.
    soc_kg_m3, soc_sigma_kg_m3
        Soil-organic-carbon density of ice-free ground (kg C m⁻³) and its 1σ.
    excess_ice, excess_ice_sigma
        Excess-ice volume fraction (0–1) and its 1σ.
    """

    top_m: float
    bottom_m: float
    soc_kg_m3: float
    soc_sigma_kg_m3: float = 0.0
    excess_ice: float = 0.0
    excess_ice_sigma: float = 0.0

    @classmethod
    def from_content(cls, *, top_m: float, bottom_m: float, bulk_density_kg_m3: float, carbon_fraction: float,
                     bulk_density_sigma_kg_m3: float = 0.0, carbon_fraction_sigma: float = 0.0,
                     excess_ice: float = 0.0, excess_ice_sigma: float = 0.0) -> SocLayer:  # fmt: skip
        """A layer from bulk density × carbon mass fraction (σ of the product of independent values)."""
        b, sb, c, sc = bulk_density_kg_m3, bulk_density_sigma_kg_m3, carbon_fraction, carbon_fraction_sigma
        sigma = float(np.sqrt(b**2 * sc**2 + c**2 * sb**2 + sb**2 * sc**2))
        return cls(top_m=top_m, bottom_m=bottom_m, soc_kg_m3=b * c, soc_sigma_kg_m3=sigma, excess_ice=excess_ice,
                   excess_ice_sigma=excess_ice_sigma)  # fmt: skip

    @property
    def mean(self) -> float:
        """E[ρ (1 − e)]: expected carbon per m³ of lost ground (kg C m⁻³)."""
        return self.soc_kg_m3 * (1.0 - self.excess_ice)

    @property
    def variance(self) -> float:
        """Var[ρ (1 − e)] for independent ρ and e."""
        m_r, s_r, m_e, s_e = self.soc_kg_m3, self.soc_sigma_kg_m3, self.excess_ice, self.excess_ice_sigma
        return m_r**2 * s_e**2 + (1.0 - m_e) ** 2 * s_r**2 + s_r**2 * s_e**2


@dataclass(frozen=True)
class SocProfile:
    """Layers from the surface down, contiguous, the last open-ended; ``source`` says where the numbers come from."""

    layers: tuple[SocLayer, ...]
    source: str = ""

    def __post_init__(self) -> None:
        check_profile(self, where="carbon profile")

    def layer_weights(self) -> np.ndarray:
        """``(n_table_layers, n_profile_layers)``: which profile layer each loss-by-depth column falls in."""
        cols = loss_layer_columns()
        w = np.zeros((len(cols), len(self.layers)))
        for i, (top, bottom, _) in enumerate(cols):
            for j, layer in enumerate(self.layers):
                if layer.top_m <= top and bottom <= layer.bottom_m:
                    w[i, j] = 1.0
        return w


def check_profile(profile: SocProfile, *, where: str) -> None:
    """Raise :class:`CarbonError` naming the layer and field of an unusable profile."""
    layers = profile.layers
    if not layers:
        raise CarbonError(f"{where}: no layers")
    edges = {float(t) for t, _ in DEPTH_LAYERS} | {float(b) for _, b in DEPTH_LAYERS}
    if layers[0].top_m != 0:
        raise CarbonError(f"{where}: layer 1: top_m must be 0 (the old ground surface), got {layers[0].top_m}")
    if np.isfinite(layers[-1].bottom_m):
        raise CarbonError(f"{where}: layer {len(layers)}: the deepest layer must be open-ended (bottom_m: .inf), "
                          f"got {layers[-1].bottom_m}")  # fmt: skip
    for k, layer in enumerate(layers, start=1):
        name = f"{where}: layer {k}"
        if k > 1 and layer.top_m != layers[k - 2].bottom_m:
            raise CarbonError(f"{name}: top_m {layer.top_m} must equal the bottom_m of the layer above "
                              f"({layers[k - 2].bottom_m})")  # fmt: skip
        if not layer.bottom_m > layer.top_m:
            raise CarbonError(f"{name}: bottom_m must be deeper than top_m, got {layer.top_m}–{layer.bottom_m}")
        for edge in (layer.top_m, layer.bottom_m):
            if edge not in edges:
                raise CarbonError(f"{name}: depth {edge} m is not a boundary of the measured loss layers "
                                  f"({sorted(edges)} m)")  # fmt: skip
        for field_, value, lo, hi in (("soc_kg_m3", layer.soc_kg_m3, 0, np.inf),
                                      ("soc_sigma_kg_m3", layer.soc_sigma_kg_m3, 0, np.inf),
                                      ("excess_ice", layer.excess_ice, 0, 1),
                                      ("excess_ice_sigma", layer.excess_ice_sigma, 0, 1)):  # fmt: skip
            if not (np.isfinite(value) and lo <= value <= hi):
                raise CarbonError(f"{name}: {field_} must be in [{lo}, {hi}], got {value!r}")


#: Medians (σ from the 5–95 % spread / 3.29) of the SOC per m³ of loss implied by the Maier et al. 2025
#: Ellesmere reference polygons: soc0_1m / (6 yr · |yearly_volume_change_0_1m|), etc.; below 3 m the mean
#: of their linear and exponential extrapolations (avg_soc_below3m).
DEFAULT_PROFILE = SocProfile(
    layers=(
        SocLayer(0.0, 1.0, soc_kg_m3=40.0, soc_sigma_kg_m3=7.2),
        SocLayer(1.0, 2.0, soc_kg_m3=35.0, soc_sigma_kg_m3=6.2),
        SocLayer(2.0, 3.0, soc_kg_m3=5.9, soc_sigma_kg_m3=2.05),
        SocLayer(3.0, np.inf, soc_kg_m3=2.9, soc_sigma_kg_m3=0.64),
    ),
    source="Maier et al. 2025, Ellesmere reference polygons (soc* attributes / loss per layer), medians",
)


@dataclass(frozen=True)
class CarbonModel:
    """A default profile and, optionally, profiles per named region (a site of the run's ``densities.sites``)
    or SOC densities from a map (``raster``: one band per layer of ``profile``, which gives depths, excess ice
    and the values where the map has none)."""

    profile: SocProfile = DEFAULT_PROFILE
    regions: Mapping[str, SocProfile] | None = None
    region_column: str = "site"
    raster: SocRaster | None = None

    def __post_init__(self) -> None:
        if self.raster is not None and self.regions:
            raise CarbonError("carbon: give SOC per region (regions) or from a map (raster), not both")

    def profiles(self) -> list[SocProfile]:
        return [self.profile, *(self.regions or {}).values()]

    def profile_index(self, rts: pd.DataFrame) -> np.ndarray:
        """Which of :meth:`profiles` each RTS uses (0 = the default)."""
        idx = np.zeros(len(rts), dtype=int)
        if self.regions and self.region_column in rts:
            names = list(self.regions)
            where = rts[self.region_column].astype(str).to_numpy()
            for k, name in enumerate(names, start=1):
                idx[where == name] = k
        return idx


def soc_columns(profile: SocProfile) -> list[tuple[str, str]]:
    """``(soc, soc_sigma)`` column names of the RTS table, one pair per layer of ``profile``."""
    out = []
    for layer in profile.layers:
        d = f"{layer.top_m:g}_{layer.bottom_m:g}m" if np.isfinite(layer.bottom_m) else f"below_{layer.top_m:g}m"
        out.append((f"soc_{d}_kg_m3", f"soc_sigma_{d}_kg_m3"))
    return out


def sample_soc(rts: pd.DataFrame, *, model: CarbonModel) -> pd.DataFrame:
    """Per RTS the SOC density (± σ) of each layer from ``model.raster``, or the profile's where it has none.

    Returns the ``soc_*`` columns and ``soc_source`` (``"raster"`` or ``"profile"``). Reads the raster.
    """
    prof = model.profile
    mu, sd = model.raster.sample(rts)
    from_map = np.isfinite(mu).all(axis=1) & np.isfinite(sd).all(axis=1)
    mu[~from_map] = [layer.soc_kg_m3 for layer in prof.layers]
    sd[~from_map] = [layer.soc_sigma_kg_m3 for layer in prof.layers]
    cols = {}
    for k, (c_mu, c_sd) in enumerate(soc_columns(prof)):
        cols[c_mu], cols[c_sd] = mu[:, k], sd[:, k]
    cols["soc_source"] = np.where(from_map, "raster", "profile")
    return pd.DataFrame(cols, index=rts.index)


def _soc_arrays(rts: pd.DataFrame, model: CarbonModel, prof: SocProfile) -> tuple[np.ndarray, np.ndarray]:
    """``(μ_ρ, σ_ρ)``, each ``(n_rts, n_layers)``: the profile's values, or each RTS's own from the map."""
    n = len(rts)
    if model.raster is not None and prof is model.profile:
        names = soc_columns(prof)
        # The RTS table keeps what the map gave (add_carbon); sample it only for a table without those columns.
        table = rts if all(c in rts for pair in names for c in pair) else sample_soc(rts, model=model)
        return table[[c for c, _ in names]].to_numpy(np.float64), table[[c for _, c in names]].to_numpy(np.float64)
    mu = np.broadcast_to([layer.soc_kg_m3 for layer in prof.layers], (n, len(prof.layers)))
    sd = np.broadcast_to([layer.soc_sigma_kg_m3 for layer in prof.layers], (n, len(prof.layers)))
    return mu, sd


def _layer_volumes(rts: pd.DataFrame, profile: SocProfile) -> np.ndarray:
    """Positive loss volume (m³) of each RTS in each layer of ``profile``."""
    cols = [c for _, _, c in loss_layer_columns()]
    missing = [c for c in cols if c not in rts]
    if missing:
        raise CarbonError(f"the RTS table has no loss-by-depth column(s) {missing} (measure it with this rtsflow)")
    loss = -np.nan_to_num(rts[cols].to_numpy(dtype=np.float64))
    return np.clip(loss, 0.0, None) @ profile.layer_weights()


def _relative_volume_sigma(rts: pd.DataFrame) -> np.ndarray:
    loss = np.abs(np.nan_to_num(rts["loss_m3"].to_numpy(dtype=np.float64)))
    sigma = np.nan_to_num(rts["volume_sigma_m3"].to_numpy(dtype=np.float64))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(loss > 0, sigma / loss, 0.0)


def _terms(rts: pd.DataFrame, model: CarbonModel):
    """Per RTS: E C and the E[(a·g)²] term; per profile the layer volumes and parameter moments."""
    profiles = model.profiles()
    which = model.profile_index(rts)
    n = len(rts)
    mean = np.zeros(n)
    second = np.zeros(n)  # E[(Σ_l V_l g_l)²]
    groups = []
    for p, prof in enumerate(profiles):
        v = _layer_volumes(rts, prof) * (which == p)[:, None]
        mu_r, sd_r = _soc_arrays(rts, model, prof)
        mu_e = np.array([layer.excess_ice for layer in prof.layers])
        sd_e = np.array([layer.excess_ice_sigma for layer in prof.layers])
        mu_g = mu_r * (1.0 - mu_e)
        var_g = mu_r**2 * sd_e**2 + (1.0 - mu_e) ** 2 * sd_r**2 + sd_r**2 * sd_e**2
        mean += (v * mu_g).sum(axis=1)
        second += (v * mu_g).sum(axis=1) ** 2 + (v**2 * var_g).sum(axis=1)
        groups.append((v, mu_r, sd_r, mu_e, sd_e, var_g))
    return mean, second, groups


def rts_carbon(rts: pd.DataFrame, *, model: CarbonModel = CarbonModel()) -> pd.DataFrame:
    """Carbon mobilised by each RTS: ``carbon_kg``, ``carbon_sigma_kg`` and their ``_per_year`` rates.

    Parameters
    ----------
    rts
        Measured RTS with the loss-by-depth columns, ``loss_m3``, ``volume_sigma_m3`` and ``years``.
    model
        SOC profile(s); see the module docstring for the formula and the error model.
    """
    mean, second, groups = _terms(rts, model)
    eps = _relative_volume_sigma(rts)
    var = sum((v**2 * g[-1]).sum(axis=1) for v, *g in groups) + eps**2 * second
    years = rts["years"].to_numpy(dtype=np.float64) if "years" in rts else np.ones(len(rts))
    sigma = np.sqrt(var)
    return pd.DataFrame({"carbon_kg": mean, "carbon_sigma_kg": sigma, "carbon_per_year_kg": mean / years,
                         "carbon_sigma_per_year_kg": sigma / years}, index=rts.index)  # fmt: skip


def add_carbon(rts: pd.DataFrame, *, model: CarbonModel = CarbonModel()) -> pd.DataFrame:
    """``rts`` with the columns of :func:`rts_carbon` joined (and, with a SOC map, the densities it gave)."""
    if model.raster is not None:
        soc = sample_soc(rts, model=model)
        rts = rts.drop(columns=[c for c in soc if c in rts]).join(soc)
    return rts.join(rts_carbon(rts, model=model))


def zone_carbon(rts: pd.DataFrame, zone: Sequence[int] | np.ndarray, *, n_zones: int,
                model: CarbonModel = CarbonModel()) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Carbon (kg) and its σ per zone; ``zone[i]`` is RTS i's zone (-1: none).

    Parameter errors are shared by the RTS of a zone (summed before squaring);
    volume errors are independent between RTS.
    """
    zone = np.asarray(zone, dtype=int)
    sel = zone >= 0
    mean, second, groups = _terms(rts, model)
    eps = _relative_volume_sigma(rts)
    # float: bincount of an empty selection (no RTS in any zone) returns integers
    total = np.bincount(zone[sel], weights=mean[sel], minlength=n_zones).astype(float)
    var = np.bincount(zone[sel], weights=(eps**2 * second)[sel], minlength=n_zones).astype(float)
    for v, mu_r, sd_r, mu_e, sd_e, _ in groups:
        # Parameter errors shared by the zone's RTS: A = Σ V μ_ρ, B = Σ V σ_ρ per layer (module docstring).
        a = np.zeros((n_zones, v.shape[1]))
        b = np.zeros((n_zones, v.shape[1]))
        np.add.at(a, zone[sel], (v * mu_r)[sel])
        np.add.at(b, zone[sel], (v * sd_r)[sel])
        var += ((1.0 - mu_e) ** 2 * b**2 + sd_e**2 * (a**2 + b**2)).sum(axis=1)
    return total, np.sqrt(var)


def profile_from_doc(doc, *, where: str) -> SocProfile:
    """A profile from a config list of layers (``soc_kg_m3``, or ``bulk_density_kg_m3`` + ``carbon_fraction``)."""
    if not isinstance(doc, list) or not doc:
        raise CarbonError(f"{where}: expected a list of layers ({{top_m, bottom_m, soc_kg_m3, …}}), got {doc!r}")
    known = {"top_m", "bottom_m", "soc_kg_m3", "soc_sigma_kg_m3", "excess_ice", "excess_ice_sigma",
             "bulk_density_kg_m3", "bulk_density_sigma_kg_m3", "carbon_fraction", "carbon_fraction_sigma"}  # fmt: skip
    layers = []
    for k, item in enumerate(doc, start=1):
        name = f"{where}: layer {k}"
        if not isinstance(item, dict):
            raise CarbonError(f"{name}: expected a mapping, got {item!r}")
        unknown = set(item) - known
        if unknown:
            raise CarbonError(f"{name}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
        values = {}
        for key, v in item.items():
            if key == "bottom_m" and (v is None or v in (".inf", "inf", "Infinity")):
                v = np.inf
            if not isinstance(v, int | float) or isinstance(v, bool):
                raise CarbonError(f"{name}: {key}: expected a number, got {v!r}")
            values[key] = float(v)
        for key in ("top_m", "bottom_m"):
            if key not in values:
                raise CarbonError(f"{name}: missing {key!r}")
        if "soc_kg_m3" in values:
            if "bulk_density_kg_m3" in values or "carbon_fraction" in values:
                raise CarbonError(f"{name}: give soc_kg_m3 or bulk_density_kg_m3 + carbon_fraction, not both")
            layers.append(SocLayer(**values))
        elif "bulk_density_kg_m3" in values and "carbon_fraction" in values:
            if not 0 <= values["carbon_fraction"] <= 1:
                raise CarbonError(f"{name}: carbon_fraction must be in [0, 1], got {values['carbon_fraction']}")
            layers.append(SocLayer.from_content(**values))
        else:
            raise CarbonError(f"{name}: give soc_kg_m3, or bulk_density_kg_m3 and carbon_fraction")
    return SocProfile(layers=tuple(layers), source=where)
