"""Least privilege, proven by the real apiserver's RBAC: the documented ClusterRole is enough, and
every one of its verbs is needed by some upgrade."""

from __future__ import annotations

import pytest

from tests.conftest import install_crds_like_helm, run_hook, settled_crd_state
from tests.support.calico import bundle_dir, manifest_path
from tests.support.rbac import bind_service_account, documented_cluster_role, in_cluster_env, without_verb
from tests.test_upgrade_cluster import TIERS, set_running_version

pytestmark = pytest.mark.cluster


def upgrade_as_service_account(plane, tmp_path, role, tags=("v3.28.2", "v3.29.1")):
    install_crds_like_helm(plane, manifest_path(tags[0]))
    set_running_version(plane, tags[0])
    env = in_cluster_env(plane, bind_service_account(plane, role), tmp_path)
    before = settled_crd_state(plane)
    run = run_hook("apply", "--version", tags[1], "--bundle-dir", str(bundle_dir(tmp_path, tags[1])),
                   "--timeout", "60", env=env)
    return run, before


def test_documented_cluster_role_is_enough_in_cluster(control_plane, tmp_path):
    run, _ = upgrade_as_service_account(control_plane, tmp_path, documented_cluster_role())
    assert run.code == 0, run
    assert control_plane.get(f"{TIERS}/default")["spec"]["defaultAction"] == "Deny"


def _every_rule_verb():
    role = documented_cluster_role()
    for index, rule in enumerate(role["rules"]):
        for verb in rule["verbs"]:
            groups = ",".join(rule["apiGroups"])
            yield pytest.param(index, verb, id=f"{verb}-{'+'.join(rule['resources'])}-{groups}")


# 3.31 -> 3.32 uses every v1-mode rule: new CRDs (create), Tier checks and creation, the
# Installation and the AdminNetworkPolicy lists.
@pytest.mark.parametrize("rule_index,verb", list(_every_rule_verb()))
def test_each_documented_verb_is_needed(control_plane, tmp_path, rule_index, verb):
    role = documented_cluster_role()
    resources = role["rules"][rule_index]["resources"]
    run, before = upgrade_as_service_account(control_plane, tmp_path, without_verb(role, rule_index, verb),
                                             tags=("v3.31.7", "v3.32.1"))
    assert run.code == 5, run
    assert "forbidden" in run.error_line and "ClusterRole" in run.error_line
    assert f'cannot {verb} resource "{resources[0]}"' in run.error_line or \
        any(f'cannot {verb} resource "{r}"' in run.error_line for r in resources)
    assert settled_crd_state(control_plane) == before  # refused before anything was written
    assert control_plane.get(f"{TIERS}/kube-admin") is None
