"""σ_h from coherence (Maier et al. 2025, Eq. 1), against closed forms and real coherence rasters."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from hypothesis import given
from hypothesis import strategies as st

from rtsflow.kernels.error import sigma_h

from .conftest import shared


def test_closed_form_at_gamma_half():
    # σ_h = √(1 − 0.25) / (0.5 √8) · 40 / (2π) = 0.6124 · 6.3662 = 3.8985 m
    expected = np.sqrt(0.75) / (0.5 * np.sqrt(8.0)) * 40.0 / (2 * np.pi)
    assert sigma_h(np.array(0.5), 40.0) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(3.8985, abs=1e-4)


def test_limits_never_raise():
    out = sigma_h(np.array([0.0, 1.0, np.nan], dtype="float32"), 40.0)
    assert out.dtype == np.float32
    assert np.isposinf(out[0]) and out[1] == 0.0 and np.isnan(out[2])


@given(st.floats(0.01, 0.99), st.floats(0.01, 0.99), st.floats(1.0, 200.0))
def test_decreasing_in_coherence_linear_in_hoa(g1, g2, hoa):
    lo, hi = sorted((g1, g2))
    if hi - lo > 1e-9:
        assert sigma_h(np.array(hi), hoa) < sigma_h(np.array(lo), hoa)
    assert sigma_h(np.array(g1), 2 * hoa) == pytest.approx(2 * sigma_h(np.array(g1), hoa))


def test_real_coherence_rasters():
    files = sorted(shared("pyrate_coherence").glob("*_cc.tif"))
    assert len(files) == 6
    for f in files:
        with rasterio.open(f) as src:
            gamma = src.read(1).astype("float64")
        s = sigma_h(gamma, 40.0)
        positive = gamma > 0
        assert positive.sum() > 0.5 * gamma.size
        assert np.isfinite(s[positive]).all()
        order = np.argsort(gamma[positive])
        assert (np.diff(s[positive][order]) <= 1e-12).all()  # monotonically decreasing in γ
