"""A known release is exactly that release; a newer one may change only what Calico changes.

Offline, with the real release files: each rule of `release_rules` refused with exit 3 under every
invocation where it applies (a known version whose modified CRDs are allowed, a newer version, no
version; each file pinned by its own --sha256, as a mirror's copy is), while the ways a mirror
re-serializes a release (CRLF, a BOM, comments, `...`, reordered documents, JSON) pass under all
three. The apiserver's acceptance of every case is shown in test_manifest_policy_cluster."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from calico_crd_hook import cli
from calico_crd_hook.errors import EXIT_MANIFEST_REJECTED, EXIT_OK
from calico_crd_hook.release_rules import BUILT_IN_CATEGORIES, BUILT_IN_SHORT_NAMES, check_unreleased_document
from calico_crd_hook.releases import release_table
from calico_crd_hook.strict_yaml import parse_documents

from tests.support.bad_manifests import BAD_TIERS, RELEASE_RULE_CASES, manifest_with, release_texts, validate_pinned
from tests.support.calico import manifest_path, release_files

KNOWN, NEWER = "v3.32.1", "v3.33.0"
EDITED_RELEASE = "v3.29.1"  # the file BAD_TIERS edit
INVOCATIONS = {"known version, modified CRDs allowed": [f"--version={EDITED_RELEASE}", "--allow-modified-crds"],
               "newer version": [f"--version={NEWER}"], "no version": []}
BENIGN_RELEASE = "v3.29.1"  # half the size of v3.32.1's file: the quick loop runs these 21 times
BENIGN_INVOCATIONS = {"known version": [f"--version={BENIGN_RELEASE}"], "newer version": [f"--version={NEWER}"],
                      "no version": []}


@pytest.mark.parametrize("case", RELEASE_RULE_CASES)
@pytest.mark.parametrize("invocation", list(INVOCATIONS))
def test_each_release_rule_is_refused_offline_under_every_invocation(capsys, tmp_path, case, invocation):
    bad = BAD_TIERS[case]

    code, error, _ = validate_pinned(capsys, tmp_path, manifest_with(bad), *INVOCATIONS[invocation])

    assert code == EXIT_MANIFEST_REJECTED, error
    assert bad.message in error
    assert error.count("\n") == 0 and error.startswith("calico-crd-hook: error: CRD tiers.crd.projectcalico.org")


BENIGN = {  # each applied to BENIGN_RELEASE's file (release_texts: its documents' own text)
    "CRLF line ends": lambda data: data.replace(b"\n", b"\r\n"),
    "a byte-order mark": lambda data: b"\xef\xbb\xbf" + data,
    "comments": lambda data: b"# mirrored by the platform team\n" + data.replace(b"\nspec:\n", b"\nspec: # the spec\n"),
    "document end markers": lambda data: "\n...\n---\n".join(release_texts(BENIGN_RELEASE)).encode() + b"\n...\n",
    "reordered documents": lambda data: "\n---\n".join(reversed(release_texts(BENIGN_RELEASE))).encode(),
    "a document written as JSON": lambda data: "\n---\n".join(
        [json.dumps(yaml.safe_load(release_texts(BENIGN_RELEASE)[0])), *release_texts(BENIGN_RELEASE)[1:]]).encode(),
    "empty documents between": lambda data: "\n---\n---\n".join(release_texts(BENIGN_RELEASE)).encode(),
}


@pytest.mark.parametrize("transformation", list(BENIGN))
@pytest.mark.parametrize("invocation", list(BENIGN_INVOCATIONS))
def test_a_re_serialized_release_passes_under_every_invocation(capsys, tmp_path, transformation, invocation):
    data = BENIGN[transformation](manifest_path(BENIGN_RELEASE).read_bytes())
    assert data != manifest_path(BENIGN_RELEASE).read_bytes()

    code, error, err = validate_pinned(capsys, tmp_path, data, *BENIGN_INVOCATIONS[invocation])

    assert code == EXIT_OK, err
    assert "differs" not in err


def test_a_known_release_with_another_releases_document_is_refused(capsys, tmp_path):
    """A v3.32.1 file with v3.31.7's Tier CRD: each document is a released one, but not this release's."""
    older_tier = next(text for text in release_texts("v3.31.7") if "name: tiers.crd.projectcalico.org" in text)
    texts = [older_tier if "name: tiers.crd.projectcalico.org" in text else text for text in release_texts(KNOWN)]

    code, error, _ = validate_pinned(capsys, tmp_path, "\n---\n".join(texts).encode(), f"--version={KNOWN}")

    assert code == EXIT_MANIFEST_REJECTED
    assert "CRD tiers.crd.projectcalico.org is Calico v3.31." in error and "'s document, not v3.32.1's" in error
    assert "pass --allow-modified-crds" in error


@pytest.mark.parametrize("invocation", list(BENIGN_INVOCATIONS))
def test_empty_documents_count_toward_the_document_cap(capsys, tmp_path, invocation):
    data = b"---\n" * 5000 + manifest_path(KNOWN).read_bytes()

    code, error, _ = validate_pinned(capsys, tmp_path, data, *BENIGN_INVOCATIONS[invocation])

    assert code == EXIT_MANIFEST_REJECTED
    assert "the manifest holds more than 100 documents (empty ones counted)" in error


def test_the_table_knows_what_the_rules_derive_from():
    """Labels: no release has any; annotations: the four keys controller-gen and the Kubernetes
    network-policy CRDs carry. No release's short name or category is a built-in one."""
    labels, annotations = release_table().metadata_keys
    assert labels == frozenset()
    assert annotations == {"controller-gen.kubebuilder.io/version", "api-approved.kubernetes.io",
                           "policy.networking.k8s.io/bundle-version", "policy.networking.k8s.io/channel"}
    facts = release_table().facts.values()
    assert len({fact.crd for fact in facts}) >= 40
    assert not {name for fact in facts for name in fact.short_names} & BUILT_IN_SHORT_NAMES
    assert not {name for fact in facts for name in fact.categories} & BUILT_IN_CATEGORIES


@pytest.mark.parametrize("tag,file_name", release_files())
def test_every_real_release_passes_the_release_rules_and_validates_quickly(capsys, tag, file_name):
    """Each document judged as a newer release's would be, and the file with its version validated
    well under half a second."""
    data = manifest_path(tag, file_name).read_bytes()
    for document in parse_documents(data):
        if document:
            document.pop("status", None)
            document["metadata"].pop("creationTimestamp", None)
            check_unreleased_document(document["metadata"]["name"], document)

    mode = ["--api-mode", "v3" if file_name.startswith("v3_") else "v1"]
    started = time.perf_counter()
    code = cli.main(["validate", "--version", tag, "--manifest", str(manifest_path(tag, file_name)), *mode])
    seconds = time.perf_counter() - started

    assert code == EXIT_OK and seconds < 0.5, (code, seconds, capsys.readouterr().err)


def test_validate_counts_the_cel_rules_only_the_apiserver_checks(capsys):
    """No CEL library on PyPI has Kubernetes' environment (docs/manifest-policy.md): the count says
    how much of the file only the server's dry-run judges."""
    path = str(manifest_path(KNOWN))
    assert cli.main(["validate", "--version", KNOWN, "--manifest", path]) == EXIT_OK
    text = capsys.readouterr().out
    assert cli.main(["validate", "--version", KNOWN, "--manifest", path, "--log-format", "json"]) == EXIT_OK
    counted = json.loads(capsys.readouterr().out)["cel_rules_checked_by_the_apiserver_only"]
    in_file = manifest_path(KNOWN).read_text().count("x-kubernetes-validations:")
    assert counted >= in_file > 0
    assert f"; {counted} CEL rules are checked by the apiserver's dry-run only" in text
