"""frechet_distance against closed forms, and its two numerical routes on near-singular covariances."""

from __future__ import annotations

import numpy as np
import pytest

from benchmark.metrics import frechet_distance
from benchmark.metrics.frechet import frechet_distance_from_features, gaussian_stats, trace_sqrt_product

METHODS = ["eigh", "sqrtm"]


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


@pytest.mark.parametrize("method", METHODS)
def test_diagonal_closed_form(method):
    # diagonal covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a_i) - sqrt(b_i))^2
    rng = np.random.default_rng(0)
    d = 16
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method=method)
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("method", METHODS)
def test_commuting_covariances_closed_form(method):
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T commute: tr sqrt(S1 S2) = sum sqrt(a_i b_i)
    rng = np.random.default_rng(1)
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.2, 4.0, d), rng.uniform(0.2, 4.0, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    expected = d * 0.25 + a.sum() + b.sum() - 2 * np.sqrt(a * b).sum()
    assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(expected, rel=1e-8)


def test_scalar_gaussians_and_symmetry():
    # 1D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9.0 + 1.0)
    rng = np.random.default_rng(2)
    s1, s2 = _random_spd(rng, 8), _random_spd(rng, 8)
    mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
    d12 = frechet_distance(mu1, s1, mu2, s2)
    assert d12 == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-9)
    assert d12 > 0.1


def test_general_covariances_match_scipy_definition():
    # non-commuting SPD matrices: both routes agree with the direct definition via scipy's sqrtm
    import scipy.linalg

    rng = np.random.default_rng(3)
    s1, s2 = _random_spd(rng, 20), _random_spd(rng, 20)
    mu1, mu2 = rng.normal(size=20), rng.normal(size=20)
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.trace(scipy.linalg.sqrtm(s1 @ s2)).real
    for method in METHODS:
        assert frechet_distance(mu1, s1, mu2, s2, method=method) == pytest.approx(direct, rel=1e-8)


@pytest.mark.parametrize("method", METHODS)
def test_identical_singular_covariances_give_zero(method):
    # fewer samples than dimensions (rank 5 of 64), the FID small-N regime: identical stats -> 0, finite
    rng = np.random.default_rng(4)
    feats = rng.normal(size=(6, 64))
    mu, sigma = gaussian_stats(feats)
    assert np.linalg.matrix_rank(sigma) == 5
    value = frechet_distance(mu, sigma, mu, sigma, method=method)
    assert np.isfinite(value)
    assert value == pytest.approx(0.0, abs=1e-6 * np.trace(sigma))


def test_near_singular_routes_agree():
    # rank-deficient covariances of different sets: the eigh and sqrtm (eps-offset) routes agree
    rng = np.random.default_rng(5)
    f1, f2 = rng.normal(size=(10, 48)), rng.normal(size=(12, 48)) * 1.5 + 0.3
    d_eigh = frechet_distance_from_features(f1, f2, method="eigh")
    d_sqrtm = frechet_distance_from_features(f1, f2, method="sqrtm")
    assert d_eigh == pytest.approx(d_sqrtm, rel=1e-4)
    # singular trace-sqrt term against a closed form: S1 = S2 = P (projector) -> tr sqrt(P P) = rank
    q, _ = np.linalg.qr(rng.normal(size=(30, 30)))
    p = q[:, :7] @ q[:, :7].T
    assert trace_sqrt_product(p, p, "eigh") == pytest.approx(7.0, abs=1e-6)
    assert trace_sqrt_product(p, p, "sqrtm") == pytest.approx(7.0, abs=1e-3)


def test_sample_estimate_converges_to_closed_form():
    # Gaussian samples: the plug-in estimate approaches the population distance as N grows
    rng = np.random.default_rng(6)
    d = 4
    a, b = np.array([1.0, 2.0, 0.5, 1.5]), np.array([2.0, 1.0, 1.0, 0.5])
    mu2 = np.array([1.0, 0.0, -1.0, 0.5])
    expected = np.sum(mu2**2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    f1 = rng.normal(size=(200_000, d)) * np.sqrt(a)
    f2 = rng.normal(size=(200_000, d)) * np.sqrt(b) + mu2
    assert frechet_distance_from_features(f1, f2) == pytest.approx(expected, rel=0.02)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="dimension mismatch"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance(np.array([np.nan, 0.0]), np.eye(2), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="sigma"):
        frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match="N >= 2"):
        gaussian_stats(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="N >= 2"):
        frechet_distance_from_features(np.zeros((1, 5)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="NaN"):
        frechet_distance_from_features(np.full((3, 5), np.inf), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="dimension mismatch"):
        frechet_distance_from_features(np.zeros((3, 5)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="unknown method"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(2), method="svd")


def test_sqrtm_fallbacks(monkeypatch):
    # the classic route's safety nets: a non-finite sqrtm is retried with eps on the diagonals, and a large
    # imaginary part falls back to the eigh route; both still give the closed-form value
    import scipy.linalg

    real_sqrtm = scipy.linalg.sqrtm
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 1.0])
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    calls = []

    def flaky_sqrtm(m):
        calls.append(m)
        return np.full_like(m, np.inf) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(scipy.linalg, "sqrtm", flaky_sqrtm)
    got = frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b), method="sqrtm")
    assert len(calls) == 2 and got == pytest.approx(expected, abs=1e-4)

    monkeypatch.setattr(scipy.linalg, "sqrtm", lambda m: real_sqrtm(m) + 1j * np.eye(len(m)))
    with pytest.warns(UserWarning, match="imaginary"):
        got = frechet_distance(np.zeros(3), np.diag(a), np.zeros(3), np.diag(b), method="sqrtm")
    assert got == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("n1,n2,d", [(6, 9, 64), (40, 30, 32), (3, 100, 20)])
def test_low_rank_feature_route_equals_covariance_route(n1, n2, d):
    # N < D uses the exact (N1, N2) nuclear-norm route; it must equal both covariance routes
    rng = np.random.default_rng(n1 * 100 + n2)
    f1 = rng.normal(size=(n1, d)) @ rng.normal(size=(d, d)) * 0.3
    f2 = rng.normal(size=(n2, d)) + rng.normal(size=d)
    fast = frechet_distance_from_features(f1, f2)
    for method in METHODS:
        assert fast == pytest.approx(
            frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2), method=method), rel=1e-6
        )
    assert frechet_distance_from_features(f1, f1) == pytest.approx(0.0, abs=1e-9 * np.sum(f1**2))


def test_torch_threads_restores_the_count():
    import torch

    from benchmark.metrics.frechet import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
        frechet_distance(np.zeros(3), np.eye(3), np.ones(3), 2 * np.eye(3))
    assert torch.get_num_threads() == before
    with torch_threads(None):
        assert torch.get_num_threads() == before
