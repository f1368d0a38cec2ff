"""Fréchet distance between two Gaussians, the core of FID and FVD.

d^2 = ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^{1/2})

The trace of the matrix square root is the only delicate term. Two ways, both in float64:
- ``"eigh"`` (default): with A = S1^{1/2} from a symmetric eigendecomposition, S1 S2 = A (A S2) has the same
  eigenvalues as the symmetric PSD matrix A S2 A, so tr((S1 S2)^{1/2}) = sum sqrt(eig(A S2 A)). Negative
  rounding-level eigenvalues are clipped at 0. Always real and finite, also for singular covariances (fewer
  samples than dimensions).
- ``"sqrtm"``: the classic TTUR / pytorch-fid route, ``scipy.linalg.sqrtm(S1 @ S2)``; when the result is not
  finite, eps is added to both diagonals and it is retried; a small imaginary part (rounding) is dropped, a
  large one falls back to ``"eigh"`` with a warning.

The eigh route runs in torch (float64) on ONE thread: eigendecompositions are mostly sequential, so on a quiet
machine one thread costs about the same as two, while on a shared, oversubscribed CPU the spinning BLAS/LAPACK
threads made a 2048-dim eigh 20x slower (ad hoc on this 2-core machine under load: 1.1 s single-threaded vs
22-27 s with 2 threads).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import scipy.linalg
import torch

log = logging.getLogger(__name__)


def _as_stats(mu: np.ndarray, sigma: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: expected mu (D,) and sigma (D, D), got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mean or covariance contains NaN or infinity")
    return mu, sigma


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the enclosed torch work on ``n`` intra-op threads (None: unchanged), restoring the count after.

    On a shared CPU, fewer threads than cores avoids OpenMP/BLAS threads spinning against other processes.
    On 2 cores, Inception took 0.19 s/frame with 2 threads vs 0.11 s with 1 next to one spinning process
    (scripts/bench_fid_fvd.py), and 0.48 vs 0.10 s next to another torch job (ad hoc, same machine).
    """
    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric PSD square root via eigh (float64); negative (rounding) eigenvalues are clipped at 0."""
    vals, vecs = torch.linalg.eigh((sigma + sigma.T) / 2)
    return (vecs * vals.clamp(min=0.0).sqrt()) @ vecs.T


def trace_sqrt_product(
    sigma1: np.ndarray, sigma2: np.ndarray, method: str = "eigh", eps: float = 1e-6
) -> float:
    """tr((sigma1 sigma2)^{1/2}) for two PSD (D, D) covariances, in float64."""
    if method == "eigh":
        with torch_threads(1):
            s1 = torch.from_numpy(np.asarray(sigma1, dtype=np.float64))
            s2 = torch.from_numpy(np.asarray(sigma2, dtype=np.float64))
            root1 = _psd_sqrt(s1)
            middle = root1 @ s2 @ root1
            vals = torch.linalg.eigvalsh((middle + middle.T) / 2)
            return float(vals.clamp(min=0.0).sqrt().sum())
    if method == "sqrtm":
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
        if not np.isfinite(covmean).all():
            log.warning("sqrtm(S1 S2) is not finite (singular product); adding %g to the diagonals", eps)
            offset = np.eye(sigma1.shape[0]) * eps
            covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3) or not np.isfinite(covmean).all():
                warnings.warn("sqrtm returned a large imaginary part; using the eigh route", stacklevel=2)
                return trace_sqrt_product(sigma1, sigma2, method="eigh")
            covmean = covmean.real
        return float(np.trace(covmean))
    raise ValueError(f"unknown method {method!r}; use 'eigh' or 'sqrtm'")


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, method: str = "eigh"
) -> float:
    """Squared Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (the FID/FVD value).

    mu: (D,), sigma: (D, D), any float dtype (computed in float64). Returns a float >= 0: a result below 0
    can only come from rounding (identical statistics) and is returned as 0.
    """
    mu1, sigma1 = _as_stats(mu1, sigma1, "first distribution")
    mu2, sigma2 = _as_stats(mu2, sigma2, "second distribution")
    if mu1.shape != mu2.shape:
        raise ValueError(f"dimension mismatch: {mu1.shape[0]} vs {mu2.shape[0]} features")
    diff = mu1 - mu2
    value = (
        diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2, method)
    )
    return max(float(value), 0.0)


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) in float64 of features (N, D); needs N >= 2."""
    feats = np.asarray(features, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"need features of shape (N >= 2, D) for a covariance, got {feats.shape}")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def frechet_distance_from_features(feats1: np.ndarray, feats2: np.ndarray, method: str = "eigh") -> float:
    """Fréchet distance between the Gaussians fitted (mean, unbiased covariance) to features (N1, D), (N2, D).

    With ``method="eigh"`` and fewer samples than dimensions (the usual FID/FVD regime on CPU), an exact
    low-rank route replaces the two D x D eigendecompositions: writing S_i = A_i^T A_i with A_i the centred
    features / sqrt(N_i - 1), the non-zero eigenvalues of S1 S2 are the squared singular values of the
    (N1, N2) matrix A1 A2^T, so tr((S1 S2)^{1/2}) is its nuclear norm. Same value, O(N1 N2 D) instead of D^3.
    """
    f1 = np.asarray(feats1, dtype=np.float64)
    f2 = np.asarray(feats2, dtype=np.float64)
    for name, f in (("first", f1), ("second", f2)):
        if f.ndim != 2 or f.shape[0] < 2:
            raise ValueError(
                f"{name} set: need features of shape (N >= 2, D) for a covariance, got {f.shape}"
            )
        if not np.isfinite(f).all():
            raise ValueError(f"{name} set: features contain NaN or infinity")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"dimension mismatch: {f1.shape[1]} vs {f2.shape[1]} features")
    if method == "eigh" and min(len(f1), len(f2)) < f1.shape[1]:
        mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
        a1 = (f1 - mu1) / np.sqrt(len(f1) - 1)
        a2 = (f2 - mu2) / np.sqrt(len(f2) - 1)
        with torch_threads(1):
            cross = torch.from_numpy(a1) @ torch.from_numpy(a2).T  # (N1, N2)
            nuclear = float(torch.linalg.svdvals(cross).sum())
        diff = mu1 - mu2
        value = diff @ diff + np.sum(a1 * a1) + np.sum(a2 * a2) - 2.0 * nuclear
        return max(float(value), 0.0)
    return frechet_distance(*gaussian_stats(f1), *gaussian_stats(f2), method=method)


def frechet_result(
    metric: str,
    real_features: np.ndarray,
    fake_features: np.ndarray,
    feature_dim: int,
    model_input: list[int],
    unit: str,
    method: str = "eigh",
    **record: Any,
) -> dict[str, Any]:
    """The result record shared by FID and FVD: value, sample counts, the small-N flag, and `record` entries.

    With fewer samples (`unit`: frames or clips) than feature dimensions the estimate is biased upwards: the record
    says so (`small_n_warning`) and a warning is logged.
    """
    n_real, n_fake = int(len(real_features)), int(len(fake_features))
    value = frechet_distance_from_features(real_features, fake_features, method=method)
    small = min(n_real, n_fake) < feature_dim
    if small:
        log.warning(
            "%s with n_real=%d, n_fake=%d %s < %d feature dims is biased upwards; compare only at equal N",
            metric.upper(),
            n_real,
            n_fake,
            unit,
            feature_dim,
        )
    return {
        "metric": metric,
        "value": value,
        "n_real": n_real,
        "n_fake": n_fake,
        "small_n_warning": small,
        "feature_dim": feature_dim,
        "model_input": model_input,
        **record,
    }
