"""Benchmark metrics. Importing this package is cheap: the FID/FVD networks load only when first used
(``benchmark.metrics.fid.load_inception()``, ``benchmark.metrics.fvd.load_i3d()``)."""

from benchmark.metrics.frechet import frechet_distance

__all__ = ["frechet_distance"]
