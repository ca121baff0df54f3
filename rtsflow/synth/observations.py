"""Synthetic InSAR observations of a :class:`~rtsflow.synth.scene.Scene` (pure NumPy).

Each observation sees the scene's surface at one epoch through a small
horizontal shift and a tilt, with coherence-dependent noise drawn from σ_h
(Maier et al. 2025, Eq. 1), low coherence on water and in patches, and
layover/shadow where slopes face toward / away from the radar steeply.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtsflow.kernels.error import sigma_h
from rtsflow.synth.fields import PlaneWaves, rng_for
from rtsflow.synth.scene import Scene

__all__ = ["Observation", "render_observation", "schedule"]

_WINTER_MONTHS = (10, 11, 12, 1, 2, 3, 4)


@dataclass(frozen=True)
class Observation:
    """One synthetic acquisition."""

    index: int
    id: str
    time: np.datetime64
    epoch: int  # index into scene.epochs of the surface state it sees
    winter: int | None  # winter label (year it starts), None for summer acquisitions
    hoa: float
    orbit: str
    incidence_deg: float
    shift: tuple[float, float]  # metres (x, y): the DEM shows the ground at p + shift
    tilt: tuple[float, float, float]  # (m per m in x, m per m in y, offset m)
    coherence_base: float
    undulation_rms: float = 0.1  # m: long-wavelength (2–20 km) height error, e.g. atmosphere


def schedule(
    scene: Scene,
    *,
    per_winter: int = 3,
    summer: bool = True,
    resolution: float = 10.0,
    max_shift_px: float = 3.0,
    ramp_sigma: float = 4e-6,
    undulation_rms: float = 0.1,
    winter_coherence: float = 0.8,
) -> list[Observation]:
    """Acquisitions: ``per_winter`` in each winter (Oct-Apr) plus one summer one after each winter.

    About a quarter of the acquisitions have a height of ambiguity outside
    15-80 m (the paper's selection range), but the first of each winter is
    always inside it. ``ramp_sigma`` (m per m) is the 1σ of each
    observation's tilt in x and y; ``undulation_rms`` (m) that of its
    long-wavelength undulations. ``winter_coherence`` is the mean base
    coherence of winter acquisitions (each draws it from −0.05…+0.1 around
    that, capped at 0.98; slopes, patches and speckle lower it pixel by pixel).
    """
    out: list[Observation] = []
    for e, winter in enumerate(scene.epochs):
        rng = rng_for(scene.seed, "obs", winter)
        months = sorted(rng.choice(_WINTER_MONTHS, size=min(per_winter, 7), replace=False), key=_WINTER_MONTHS.index)
        for k, month in enumerate(months):
            year = winter if month >= 10 else winter + 1
            day = int(rng.integers(1, 28))
            inside = k == 0 or rng.random() < 0.7
            hoa = (
                rng.uniform(20.0, 75.0)
                if inside
                else float(rng.choice([rng.uniform(8.0, 14.0), rng.uniform(85.0, 130.0)]))
            )
            out.append(_obs(scene, rng, len(out), year, int(month), day, e, winter, hoa, winter_coherence, resolution,
                            max_shift_px, ramp_sigma, undulation_rms))  # fmt: skip
        if summer:
            year = winter + 1
            hoa = rng.uniform(25.0, 70.0)
            out.append(
                _obs(
                    scene,
                    rng,
                    len(out),
                    year,
                    int(rng.choice([7, 8])),
                    int(rng.integers(1, 28)),
                    e,
                    None,
                    hoa,
                    0.55,
                    resolution,
                    max_shift_px,
                    ramp_sigma,
                    undulation_rms,
                )
            )
    return out


def _obs(scene, rng, index, year, month, day, epoch, winter, hoa, coh, resolution, max_shift_px, ramp_sigma,
         undulation_rms) -> Observation:  # fmt: skip
    orbit = "ascending" if rng.random() < 0.5 else "descending"
    time = np.datetime64(
        f"{year:04d}-{month:02d}-{day:02d}T{int(rng.integers(0, 24)):02d}:{int(rng.integers(0, 60)):02d}:00", "s"
    )
    # Sub-pixel to ~3 px misregistration, in a random direction.
    mag = resolution * rng.uniform(0.1, 3.0) * (max_shift_px / 3.0)
    ang = rng.uniform(0, 2 * np.pi)
    tilt = (rng.normal(0, ramp_sigma), rng.normal(0, ramp_sigma), rng.normal(0, 0.5))
    oid = f"SYN{scene.seed}_{str(time)[:10].replace('-', '')}_{orbit[0].upper()}{index:02d}"
    return Observation(
        index=index,
        id=oid,
        time=time,
        epoch=epoch,
        winter=winter,
        hoa=float(hoa),
        orbit=orbit,
        incidence_deg=float(rng.uniform(32.0, 45.0)),
        shift=(mag * np.cos(ang), mag * np.sin(ang)),
        tilt=tilt,
        coherence_base=float(min(coh + rng.uniform(-0.05, 0.1), 0.98)),
        undulation_rms=float(undulation_rms),
    )


def look_direction(orbit: str) -> tuple[float, float]:
    """Horizontal unit vector from the (right-looking) radar toward the ground."""
    az = np.deg2rad(80.0 if orbit == "ascending" else 260.0)  # azimuth from north, clockwise
    return float(np.sin(az)), float(np.cos(az))


def render_observation(
    scene: Scene,
    obs: Observation,
    x: np.ndarray,
    y: np.ndarray,
    *,
    noise: np.ndarray,
    centre: tuple[float, float],
) -> dict[str, np.ndarray]:
    """All layers of one observation on the grid ``x`` × ``y`` (pixel centres).

    Parameters
    ----------
    noise
        Three standard-normal fields, shape ``(3, len(y), len(x))`` (DEM noise,
        coherence speckle, water coherence), supplied by the caller so that
        they depend on global pixel position, not on windows.
    centre
        Reference point of the tilt plane.

    Returns
    -------
    dict with ``dem``, ``coherence``, ``layover_shadow`` (0/1), ``incidence``
    (rad), all float32, and ``sigma_h`` (the σ used for the noise).
    """
    res = float(abs(x[1] - x[0])) if x.size > 1 else 10.0
    dx, dy = obs.shift
    # One-pixel halo so slopes at window edges equal those of a whole-region run.
    xh = np.concatenate([[x[0] - res], x, [x[-1] + res]]) + dx
    yh = np.concatenate([[y[0] + res], y, [y[-1] - res]]) + dy
    z = scene.surface(xh, yh, obs.epoch)
    gy, gx = np.gradient(z, -res, res)  # y decreases down the rows
    z, gx, gy = z[1:-1, 1:-1], gx[1:-1, 1:-1], gy[1:-1, 1:-1]
    water = scene.water(x + dx, y + dy, obs.epoch)

    # Layover / shadow and local incidence from the slope along the look direction.
    lx, ly = look_direction(obs.orbit)
    theta = np.deg2rad(obs.incidence_deg)
    alpha = np.arctan(gx * lx + gy * ly)  # > 0: terrain faces the radar
    layover = alpha >= theta
    shadow = -alpha >= (np.pi / 2 - theta)
    incidence = np.clip(theta - alpha, 0.0, np.pi)

    # Coherence: base, low-coherence patches, water, steep slopes, speckle.
    slope = np.arctan(np.hypot(gx, gy))
    patches = PlaneWaves.random(
        rng_for(scene.seed, "patches", obs.index), n=16, wavelength=(300.0, 4000.0), rms=1.0
    ).on_grid(x, y)
    gamma = np.full(z.shape, obs.coherence_base, dtype=np.float64)
    gamma -= 0.5 * np.clip((patches - 1.0) / 0.6, 0.0, 1.0)
    gamma -= 0.3 * np.clip((np.rad2deg(slope) - 20.0) / 30.0, 0.0, 1.0)
    gamma += 0.03 * noise[1]
    gamma = np.where(water, 0.12 + 0.04 * noise[2], gamma)
    gamma = np.clip(gamma, 0.02, 0.98)

    sig = sigma_h(gamma, obs.hoa)
    ax, ay, c = obs.tilt
    tilt = ax * (x[None, :] - centre[0]) + ay * (y[:, None] - centre[1]) + c
    atmosphere = PlaneWaves.random(
        rng_for(scene.seed, "atmosphere", obs.index), n=8, wavelength=(2000.0, 20000.0), rms=obs.undulation_rms
    ).on_grid(x, y)
    dem = z + tilt + atmosphere + sig * noise[0]
    return {
        "dem": dem.astype(np.float32),
        "coherence": gamma.astype(np.float32),
        "layover_shadow": (layover | shadow).astype(np.float32),
        "incidence": incidence.astype(np.float32),
        "sigma_h": sig.astype(np.float32),
    }
