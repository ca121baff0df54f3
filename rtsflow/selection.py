"""Which observations go into which winter composite (Maier et al. 2025, Sec. 2.2)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import xarray as xr

__all__ = ["SelectionRules", "select_observations", "winter_of"]

WINTER_MONTHS = (10, 11, 12, 1, 2, 3, 4)


def winter_of(time: np.ndarray) -> np.ndarray:
    """The winter label of each time: the year the winter starts (Oct 2010-Apr 2011 → 2010).

    Months are not checked here; January 2011 gives 2010 and August 2011 gives 2011.
    """
    t = np.asarray(time, dtype="datetime64[M]")
    year = t.astype("datetime64[Y]").astype(int) + 1970
    month = (t - t.astype("datetime64[Y]")).astype(int) + 1
    return np.where(month >= 7, year, year - 1)


@dataclass(frozen=True)
class SelectionRules:
    """Observation filter. Defaults are the paper's: HoA 15-80 m, acquisitions Oct-Apr.

    ``hoa_range`` applies to InSAR products only (DEM-only products have no HoA);
    ``months=None`` keeps every month; ``orbits``/``sensors`` = None keeps all.
    ``epoch`` groups observations into composites: ``"winter"`` (labelled by
    the year the winter starts, as in the paper) or ``"date"`` (each UTC day
    its own epoch, labelled YYYYMMDD: for repeat DEMs that are not seasonal).
    """

    hoa_range: tuple[float, float] = (15.0, 80.0)
    months: tuple[int, ...] | None = WINTER_MONTHS
    orbits: tuple[str, ...] | None = None
    sensors: tuple[str, ...] | None = None
    epoch: str = "winter"

    def __post_init__(self) -> None:
        if self.epoch not in ("winter", "date"):
            raise ValueError(f"epoch must be 'winter' or 'date', got {self.epoch!r}")


DEFAULT_RULES = SelectionRules()


def select_observations(cube: xr.Dataset, *, rules: SelectionRules = DEFAULT_RULES) -> pd.DataFrame:
    """One row per observation: its winter, whether it is used, and why not.

    Parameters
    ----------
    cube
        Observation cube (only its obs coordinates are read).
    rules
        The filter.

    Returns
    -------
    pandas.DataFrame
        Columns ``obs`` (position in ``cube``), ``product_id``, ``time``,
        ``kind``, ``hoa``, ``orbit``, ``sensor``, ``winter``, ``epoch``, ``selected``,
        ``reason`` (empty when selected; otherwise every rule it failed, ``;``-joined).
    """
    time = np.asarray(cube["time"].values, dtype="datetime64[ns]")
    df = pd.DataFrame(
        {
            "obs": np.arange(time.size),
            "product_id": cube["product_id"].values.astype(str),
            "time": time,
            "kind": cube["kind"].values.astype(str),
            "hoa": cube["hoa"].values.astype(float),
            "orbit": cube["orbit"].values.astype(str),
            "sensor": cube["sensor"].values.astype(str),
        }
    )
    df["winter"] = winter_of(time)
    if rules.epoch == "winter":
        df["epoch"] = df["winter"]
    else:
        df["epoch"] = df["time"].dt.strftime("%Y%m%d").astype(int)
    month = df["time"].dt.month.to_numpy()
    reasons: list[list[str]] = [[] for _ in range(len(df))]
    lo, hi = rules.hoa_range
    for i in range(len(df)):
        if df.kind.iat[i] == "insar" and not (lo <= df.hoa.iat[i] <= hi):
            reasons[i].append(f"HoA {df.hoa.iat[i]:.1f} m outside [{lo:g}, {hi:g}] m")
        if rules.months is not None and month[i] not in rules.months:
            reasons[i].append(f"month {month[i]} outside {_months(rules.months)}")
        if rules.orbits is not None and df.orbit.iat[i] not in rules.orbits:
            reasons[i].append(f"orbit {df.orbit.iat[i]} not in {list(rules.orbits)}")
        if rules.sensors is not None and df.sensor.iat[i] not in rules.sensors:
            reasons[i].append(f"sensor {df.sensor.iat[i]} not in {list(rules.sensors)}")
    df["reason"] = ["; ".join(r) for r in reasons]
    df["selected"] = df["reason"] == ""
    return df


def _months(months: Sequence[int]) -> str:
    names = "Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split()
    return "{" + ", ".join(names[m - 1] for m in months) + "}"
