"""The shipped table of what each release holds (`data/release-crds.json`) is what the generator
makes from the real files, covers every release SHA256SUMS pins, and agrees with the CRD counts
DESIGN.md states for each Calico line."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from calico_crd_hook.releases import release_table
from calico_crd_hook.source import known_digests
from calico_crd_hook.version import parse_version

from tests.support.calico import bundle_dir, release_files

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hook" / "tools"))
import generate_release_crds  # noqa: E402 - after the sys.path entry above

REAL_FILES = release_files()


def test_the_generator_reproduces_the_table_from_the_real_files(tmp_path):
    source = tmp_path / "bundle"
    for tag, file_name in REAL_FILES:
        bundle_dir(tmp_path, tag, file_name=file_name)
    entries, absent = generate_release_crds.table_entries(source)
    assert sum(len(entry["releases"]) for entry in entries.values()) >= len(REAL_FILES)
    assert len(absent) == len(known_digests()) - sum(len(entry["releases"]) for entry in entries.values())
    assert generate_release_crds.check(entries) == []
    for sha256, entry in entries.items():
        assert release_table().with_sha256(sha256).crds == entry["crds"]


def test_a_changed_release_file_is_caught_by_the_check(tmp_path):
    source = tmp_path / "bundle"
    bundle_dir(tmp_path, "v3.29.1")
    entries, _ = generate_release_crds.table_entries(source)
    (entry,) = entries.values()
    entry["crds"]["tiers.crd.projectcalico.org"] = "0" * 64
    assert generate_release_crds.check(entries) == ["v3.29.1/operator-crds.yaml: the shipped table differs from the file"]


def test_the_table_covers_every_pinned_release():
    listed = {release for file in release_table().files for release in file.releases}
    assert listed == {f"{tag}/{file_name}" for tag, file_name in known_digests()}
    for file in release_table().files:
        assert all(known_digests()[tuple(release.split("/"))] == file.sha256 for release in file.releases)


# DESIGN.md, "Calico facts": CRDs per group (Calico group / operator.tigera.io / policy.networking.k8s.io).
EXPECTED_GROUP_COUNTS = {(3, 26): (18, 4, 0), (3, 27): (18, 4, 0), (3, 28): (18, 4, 0), (3, 29): (19, 4, 1),
                         (3, 30): (22, 8, 2), (3, 31): (22, 8, 2), (3, 32): (22, 9, 1)}


@pytest.mark.parametrize("release", sorted(f"{tag}/{name}" for tag, name in known_digests()))
def test_each_release_holds_the_crds_its_line_should(release):
    tag, file_name = release.split("/")
    version = parse_version(tag)
    calico_group = "projectcalico.org" if file_name.startswith("v3_") else "crd.projectcalico.org"
    names = list(next(file for file in release_table().files if release in file.releases).crds)
    counts = tuple(sum(1 for name in names if name.split(".", 1)[1] == group)
                   for group in (calico_group, "operator.tigera.io", "policy.networking.k8s.io"))
    calico, operator, policy = EXPECTED_GROUP_COUNTS[(version.major, version.minor)]
    # The v3-mode file leaves the Kubernetes policy kinds to Kubernetes itself.
    assert counts == (calico, operator, policy if calico_group == "crd.projectcalico.org" else 0)
    assert (f"tiers.{calico_group}" in names) == (version >= parse_version("v3.29.0"))

