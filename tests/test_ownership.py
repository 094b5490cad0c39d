"""Which fields taking over Helm's/kubectl's client-side ownership removes: decided offline from a
CRD's managed fields and the target's document."""

from __future__ import annotations

from calico_crd_hook.ownership import leftovers, merged_entries

DOCUMENT = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "ippools.crd.projectcalico.org"},
            "spec": {"group": "crd.projectcalico.org", "scope": "Cluster",
                     "names": {"kind": "IPPool", "plural": "ippools", "singular": "ippool", "listKind": "IPPoolList"},
                     "versions": [{"name": "v1", "served": True, "storage": True}]}}
HELM_CREATE = {"f:metadata": {"f:labels": {".": {}, "f:legacy": {}}, "f:annotations": {".": {}, "f:old": {}}},
               "f:spec": {"f:conversion": {".": {}, "f:strategy": {}}, "f:group": {}, "f:scope": {}, "f:versions": {},
                          "f:names": {"f:categories": {}, "f:kind": {}, "f:listKind": {}, "f:plural": {},
                                      "f:singular": {}}}}


def entry(manager: str, fields: dict, operation: str = "Update", **extra) -> dict:
    return {"manager": manager, "operation": operation, "apiVersion": "apiextensions.k8s.io/v1",
            "fieldsType": "FieldsV1", "fieldsV1": fields, "time": "2026-01-01T00:00:00Z", **extra}


def live(*entries: dict, conversion: dict | None = None) -> dict:
    spec = {**DOCUMENT["spec"], "conversion": conversion or {"strategy": "None"}, "names": {
        **DOCUMENT["spec"]["names"], "categories": ["calico"]}}
    return {"metadata": {"name": "ippools.crd.projectcalico.org", "labels": {"legacy": "x"},
                         "annotations": {"old": "1"}, "managedFields": list(entries)}, "spec": spec}


def test_fields_only_helm_set_and_the_target_dropped_are_removed():
    assert leftovers(live(entry("helm", HELM_CREATE)), DOCUMENT) == (
        "metadata.annotations", "metadata.labels", "spec.names.categories")


def test_a_field_another_manager_also_owns_stays():
    user = entry("kubectl-label", {"f:metadata": {"f:labels": {"f:legacy": {}}}})
    assert leftovers(live(entry("helm", HELM_CREATE), user), DOCUMENT) == (
        "metadata.annotations", "spec.names.categories")


def test_server_defaults_are_no_removal_unless_the_live_value_differs():
    # Helm's create owns spec.conversion because the server defaulted it before recording ownership
    assert "spec.conversion" not in leftovers(live(entry("helm", HELM_CREATE)), DOCUMENT)
    webhook = {"strategy": "Webhook", "webhook": {"conversionReviewVersions": ["v1"]}}
    assert "spec.conversion" in leftovers(live(entry("helm", HELM_CREATE), conversion=webhook), DOCUMENT)


def test_other_managers_and_status_writes_are_not_taken_over():
    assert leftovers(live(entry("kubectl-annotate", HELM_CREATE)), DOCUMENT) == ()
    assert leftovers(live(entry("helm", HELM_CREATE, subresource="status")), DOCUMENT) == ()
    assert leftovers(live(entry("argocd-controller", HELM_CREATE, operation="Apply")), DOCUMENT) == ()


def test_list_items_by_key_and_value():
    fields = {"f:spec": {"f:versions": {'k:{"name":"v1"}': {".": {}}, 'k:{"name":"v2"}': {".": {}}}},
              "f:metadata": {"f:finalizers": {'v:"a"': {}}}}
    assert leftovers(live(entry("kubectl-client-side-apply", fields)), DOCUMENT) == (
        'metadata.finalizers["a"]', 'spec.versions[{"name":"v2"}]')


def test_merged_entries_fold_client_side_sets_into_our_apply_entry():
    ours = entry("calico-crd-hook", {"f:spec": {"f:group": {}}}, operation="Apply")
    user = entry("kubectl-annotate", {"f:metadata": {"f:annotations": {"f:team": {}}}})
    merged = merged_entries({"managedFields": [entry("helm", HELM_CREATE), ours, user]})
    assert [(e["manager"], e["operation"]) for e in merged] == [("kubectl-annotate", "Update"),
                                                                ("calico-crd-hook", "Apply")]
    assert merged[1]["fieldsV1"]["f:spec"]["f:group"] == {}
    assert merged[1]["fieldsV1"]["f:metadata"]["f:labels"] == {".": {}, "f:legacy": {}}


def test_helm_4s_server_side_install_is_taken_over_too():
    """Helm 4 creates crds/ by server-side apply: an Apply entry of manager `helm`."""
    assert leftovers(live(entry("helm", HELM_CREATE, operation="Apply")), DOCUMENT) == (
        "metadata.annotations", "metadata.labels", "spec.names.categories")
