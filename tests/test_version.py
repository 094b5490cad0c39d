"""Versions, API modes and the Tier table: pure functions, no cluster."""

from __future__ import annotations

import pytest
from calico_crd_hook.errors import UsageError
from calico_crd_hook.version import (
    ApiMode,
    CalicoVersion,
    parse_running_version,
    parse_version,
    required_tiers,
    resolve_api_mode,
    skips_too_many_minors,
)


@pytest.mark.parametrize("text", ["v3.29.1", "3.29.1", " v3.29.1 "])
def test_both_spellings_are_accepted(text):
    assert parse_version(text) == CalicoVersion(3, 29, 1)
    assert parse_version(text).tag == "v3.29.1"


@pytest.mark.parametrize("text", ["", "v3.29", "3.29.x", "v3.29.1-rc1", "latest", "V3.29.1", "3.029.1", "v3.29.1.2"])
def test_anything_else_is_a_usage_error(text):
    with pytest.raises(UsageError, match="invalid Calico version"):
        parse_version(text)


def test_versions_order_numerically():
    assert parse_version("v3.9.0") < parse_version("v3.10.0") < parse_version("v3.29.10")


def test_running_version_keeps_the_release_of_a_build_string():
    assert parse_running_version("v3.28.2-0.dev-123") == CalicoVersion(3, 28, 2)
    assert parse_running_version("master") is None


@pytest.mark.parametrize("tag,names", [
    ("v3.28.2", []),
    ("v3.29.0", ["default", "adminnetworkpolicy"]),
    ("v3.30.7", ["default", "adminnetworkpolicy", "baselineadminnetworkpolicy"]),
    ("v3.31.7", ["default", "adminnetworkpolicy", "baselineadminnetworkpolicy"]),
    ("v3.32.1", ["default", "kube-admin", "kube-baseline"]),
])
def test_tier_table_per_version(tag, names):
    assert [tier.name for tier in required_tiers(parse_version(tag))] == names


def test_tier_orders_and_actions_follow_calico():
    by_name = {t.name: t for t in required_tiers(parse_version("v3.31.7")) + required_tiers(parse_version("v3.32.1"))}
    assert (by_name["default"].order, by_name["default"].default_action) == (1_000_000, "Deny")
    assert (by_name["adminnetworkpolicy"].order, by_name["adminnetworkpolicy"].default_action) == (1_000, "Pass")
    baseline = by_name["baselineadminnetworkpolicy"]
    assert (baseline.order, baseline.default_action) == (10_000_000, "Pass")
    assert (by_name["kube-admin"].order, by_name["kube-baseline"].order) == (1_000, 10_000_000)


def test_api_mode_auto_follows_the_operator_rule():
    v3_32 = parse_version("v3.32.1")
    assert resolve_api_mode("auto", v3_32, {"tiers.projectcalico.org", "installations.operator.tigera.io"}) is ApiMode.V3
    assert resolve_api_mode("auto", v3_32, {"tiers.crd.projectcalico.org", "tiers.projectcalico.org"}) is ApiMode.V1
    assert resolve_api_mode("auto", v3_32, set()) is ApiMode.V1
    assert resolve_api_mode("auto", parse_version("v3.31.7"), {"tiers.projectcalico.org"}) is ApiMode.V1


def test_api_mode_v3_needs_3_32():
    with pytest.raises(UsageError, match="needs Calico v3.32.0"):
        resolve_api_mode("v3", parse_version("v3.31.7"), None)


def test_skipping_more_than_two_minors_is_flagged():
    assert not skips_too_many_minors(parse_version("v3.29.1"), parse_version("v3.31.7"))
    assert skips_too_many_minors(parse_version("v3.28.2"), parse_version("v3.31.7"))
