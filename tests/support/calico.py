"""Real Calico manifests for the tests: ../shared/calico when present, else downloaded once from
GitHub raw into the cache and checked against the digests the package ships."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import requests
from calico_crd_hook.source import DEFAULT_URL_TEMPLATE, known_digests

from tests.support.assets import cache_root, keep_in_cache

REPO = Path(__file__).resolve().parents[2]


def shared_calico_dir() -> Path | None:
    configured = os.environ.get("CALICO_MANIFESTS_DIR")
    candidates = [Path(configured)] if configured else []
    candidates.append(REPO.parent / "shared" / "calico")
    return next((path for path in candidates if path.is_dir()), None)


def manifest_path(tag: str, file_name: str = "operator-crds.yaml") -> Path:
    expected = known_digests()[(tag, file_name)]
    shared = shared_calico_dir()
    if shared and (shared / tag / file_name).is_file():
        return shared / tag / file_name
    cached = cache_root() / "calico" / tag / file_name
    if not cached.is_file():
        url = DEFAULT_URL_TEMPLATE.format(version=tag, file=file_name)
        response = requests.get(url, timeout=60)
        response.raise_for_status()
        keep_in_cache(cached, response.content)
    if hashlib.sha256(cached.read_bytes()).hexdigest() != expected:
        cached.unlink()
        raise RuntimeError(f"downloaded {tag}/{file_name} does not match its pinned digest")
    return cached


def bundle_dir(tmp_path: Path, *tags: str, file_name: str = "operator-crds.yaml") -> Path:
    """A --bundle-dir layout of real manifests (symlinks, so nothing is copied)."""
    root = tmp_path / "bundle"
    for tag in tags:
        (root / tag).mkdir(parents=True, exist_ok=True)
        link = root / tag / file_name
        if not link.exists():
            link.symlink_to(manifest_path(tag, file_name))
    return root


def release_files() -> list[tuple[str, str]]:
    """(tag, file name) of every real release file at hand: ../shared/calico's, else a few from the cache."""
    shared = shared_calico_dir()
    found = sorted((path.parent.name, path.name) for path in shared.glob("v*/*.yaml")) if shared else []
    return found or [("v3.28.2", "operator-crds.yaml"), ("v3.29.1", "operator-crds.yaml"),
                     ("v3.30.7", "operator-crds.yaml"), ("v3.31.7", "operator-crds.yaml"),
                     ("v3.32.1", "operator-crds.yaml"), ("v3.32.1", "v3_projectcalico_org.yaml")]
