"""Stage 1: the target Calico version, and the facts that depend on it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from calico_crd_hook.errors import UsageError

_VERSION_PATTERN = re.compile(r"^v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")

# Calico supports upgrades across at most this many minor releases at once.
SUPPORTED_MINOR_JUMP = 2


@dataclass(frozen=True, order=True)
class CalicoVersion:
    major: int
    minor: int
    patch: int

    @property
    def tag(self) -> str:
        return f"v{self.major}.{self.minor}.{self.patch}"

    def __str__(self) -> str:
        return self.tag


def parse_version(text: str) -> CalicoVersion:
    """Accept `v3.29.1` or `3.29.1`; anything else is a usage error."""
    match = _VERSION_PATTERN.match(text.strip())
    if not match:
        raise UsageError(
            f"invalid Calico version {text!r}: give a release such as v3.29.1 or 3.29.1"
        )
    major, minor, patch = (int(part) for part in match.groups())
    return CalicoVersion(major, minor, patch)


def parse_running_version(text: str) -> CalicoVersion | None:
    """ClusterInformation's calicoVersion may carry build suffixes (v3.28.2-0.dev); keep x.y.z."""
    match = re.match(r"^v?(\d+)\.(\d+)\.(\d+)", text.strip())
    if not match:
        return None
    major, minor, patch = (int(part) for part in match.groups())
    return CalicoVersion(major, minor, patch)


def skips_too_many_minors(running: CalicoVersion, target: CalicoVersion) -> bool:
    if running.major != target.major:
        return True
    return target.minor - running.minor > SUPPORTED_MINOR_JUMP


class ApiMode(Enum):
    """Calico's two ways of storing its API from v3.32 (DESIGN.md, "Two API modes")."""

    V1 = "v1"  # crd.projectcalico.org CRDs, projectcalico.org/v3 served by calico-apiserver
    V3 = "v3"  # native projectcalico.org/v3 CRDs

    @property
    def manifest_file(self) -> str:
        return "operator-crds.yaml" if self is ApiMode.V1 else "v3_projectcalico_org.yaml"

    @property
    def calico_group(self) -> str:
        return "crd.projectcalico.org" if self is ApiMode.V1 else "projectcalico.org"

    @property
    def calico_api_version(self) -> str:
        return "crd.projectcalico.org/v1" if self is ApiMode.V1 else "projectcalico.org/v3"

    @property
    def tiers_path(self) -> str:
        """The Tier collection, read through the CRD API of the mode (never the aggregated API)."""
        return f"/apis/{self.calico_api_version}/tiers"

    @property
    def default_allowed_groups(self) -> frozenset[str]:
        return frozenset({self.calico_group, "operator.tigera.io", "policy.networking.k8s.io"})


# CRDs only Calico Enterprise has, in the v1 and v3 API modes: no open-source release ships them.
ENTERPRISE_MARKER_CRDS = frozenset({"licensekeys.crd.projectcalico.org", "licensekeys.projectcalico.org"})

# Releases whose facts the code depends on (DESIGN.md, "Calico facts").
V3_29 = CalicoVersion(3, 29, 0)  # the Tier CRD and Tiers
V3_30 = CalicoVersion(3, 30, 0)  # the baselineadminnetworkpolicy Tier
V3_32 = CalicoVersion(3, 32, 0)  # kube-admin/kube-baseline Tiers, ANP kinds dropped, CEL on Tiers
FIRST_VERSION_WITH_V3_MODE = V3_32  # the API-mode choice, a fact of its own


def resolve_api_mode(requested: str, target: CalicoVersion, live_crd_names: set[str] | None,
                     configured_api_group: str | None = None) -> ApiMode:
    """`auto` picks the mode Calico itself would (libcalico-go UsingV3CRDs): CALICO_API_GROUP when
    it is set, else v3 only when projectcalico.org CRDs exist and crd.projectcalico.org ones do not."""
    if requested in ("v1", "v3"):
        mode = ApiMode(requested)
        if mode is ApiMode.V3 and target < FIRST_VERSION_WITH_V3_MODE:
            raise UsageError(f"--api-mode v3 needs Calico v3.32.0 or newer, not {target}: drop --api-mode")
        return mode
    if requested != "auto":
        raise UsageError(f"invalid --api-mode {requested!r}: use auto, v1 or v3")
    if target < FIRST_VERSION_WITH_V3_MODE:
        return ApiMode.V1
    if configured_api_group:
        return ApiMode.V3 if configured_api_group.strip().lower() == "projectcalico.org/v3" else ApiMode.V1
    if live_crd_names is None:
        return ApiMode.V1
    return cluster_api_mode(live_crd_names) or ApiMode.V1


def cluster_api_mode(live_crd_names: set[str]) -> ApiMode | None:
    """The mode a cluster is in, None when it holds no Calico CRDs yet. Only the two Calico groups
    count: migration.projectcalico.org and the like are other APIs."""
    groups = {name.split(".", 1)[1] for name in live_crd_names if "." in name}
    if ApiMode.V1.calico_group in groups:
        return ApiMode.V1
    return ApiMode.V3 if ApiMode.V3.calico_group in groups else None


@dataclass(frozen=True)
class TierSpec:
    name: str
    order: int
    default_action: str


DEFAULT_TIER = TierSpec("default", 1_000_000, "Deny")


def required_tiers(target: CalicoVersion) -> tuple[TierSpec, ...]:
    """The Tiers Calico itself creates on start at that version (libcalico-go EnsureInitialized)."""
    if target < V3_29:
        return ()
    if target >= V3_32:
        return (DEFAULT_TIER, TierSpec("kube-admin", 1_000, "Pass"),
                TierSpec("kube-baseline", 10_000_000, "Pass"))
    tiers: tuple[TierSpec, ...] = (DEFAULT_TIER, TierSpec("adminnetworkpolicy", 1_000, "Pass"))
    if target >= V3_30:
        tiers += (TierSpec("baselineadminnetworkpolicy", 10_000_000, "Pass"),)
    return tiers
