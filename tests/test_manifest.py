"""Offline parsing and validation, on the real Calico files and on broken copies of them."""

from __future__ import annotations

import copy
import hashlib
import time

import pytest
import yaml
from calico_crd_hook.errors import ManifestRejected
from calico_crd_hook.manifest import validate_manifest
from calico_crd_hook.source import FetchedManifest
from calico_crd_hook.strict_yaml import documents_largest_first, parse_documents
from calico_crd_hook.version import ApiMode, parse_version

from tests.support.bad_manifests import dump, real_documents
from tests.support.calico import manifest_path, release_files

V1_GROUPS = ApiMode.V1.default_allowed_groups


def fetched(data: bytes) -> FetchedManifest:
    return FetchedManifest(data=data, origin="test.yaml", sha256=hashlib.sha256(data).hexdigest())


def validate(data: bytes, tag: str | None = "v3.29.1", mode: ApiMode = ApiMode.V1):
    """The rules under test here still apply with modified CRDs allowed; a known release's own
    refusal of any modified document is tested in test_manifest_policy."""
    return validate_manifest(fetched(data), parse_version(tag) if tag else None, mode, mode.default_allowed_groups,
                             allow_modified=True)




@pytest.mark.parametrize("tag,file_name,mode,counts", [
    ("v3.28.2", "operator-crds.yaml", ApiMode.V1, {"crd.projectcalico.org": 18, "operator.tigera.io": 4}),
    ("v3.29.1", "operator-crds.yaml", ApiMode.V1,
     {"crd.projectcalico.org": 19, "operator.tigera.io": 4, "policy.networking.k8s.io": 1}),
    ("v3.30.7", "operator-crds.yaml", ApiMode.V1,
     {"crd.projectcalico.org": 22, "operator.tigera.io": 8, "policy.networking.k8s.io": 2}),
    ("v3.31.7", "operator-crds.yaml", ApiMode.V1,
     {"crd.projectcalico.org": 22, "operator.tigera.io": 8, "policy.networking.k8s.io": 2}),
    ("v3.32.1", "operator-crds.yaml", ApiMode.V1,
     {"crd.projectcalico.org": 22, "operator.tigera.io": 9, "policy.networking.k8s.io": 1}),
    ("v3.32.1", "v3_projectcalico_org.yaml", ApiMode.V3, {"projectcalico.org": 22, "operator.tigera.io": 9}),
])
def test_real_release_files_validate(tag, file_name, mode, counts):
    manifest = validate(manifest_path(tag, file_name).read_bytes(), tag, mode)
    found: dict[str, int] = {}
    for crd in manifest.crds:
        found[crd.group] = found.get(crd.group, 0) + 1
    assert found == counts


@pytest.mark.parametrize("tag,file_name", release_files())
def test_the_event_parser_reads_every_release_as_pyyaml_does(tag, file_name):
    """Our own builder on libyaml's events replaces PyYAML's constructor (3x faster): on a real
    file it must give exactly PyYAML's documents, down to each value's type."""
    data = manifest_path(tag, file_name).read_bytes()
    ours = parse_documents(data)
    theirs = [document for document in yaml.load_all(data, Loader=yaml.CSafeLoader) if document is not None]
    assert ours == theirs
    assert _types(ours) == _types(theirs)  # 1 == 1.0 == True in Python: compare the types too


@pytest.mark.parametrize("tag,file_name", release_files())
def test_a_released_file_is_validated_largest_document_first_and_kept_in_file_order(tag, file_name):
    """The installations CRD takes the server longest to dry-run, so a released file's documents
    are validated largest first: each dry-run starts as its document passes. The file's documents
    must all be read, as the whole-file parse reads them, and the run keeps the file's order."""
    data = manifest_path(tag, file_name).read_bytes()
    in_file_order = parse_documents(data)
    mode = ApiMode.V3 if file_name == ApiMode.V3.manifest_file else ApiMode.V1
    handed_over: list = []

    manifest = validate_manifest(fetched(data), parse_version(tag), mode, mode.default_allowed_groups,
                                 on_released_crd=handed_over.append)

    sizes = {crd.name: len(crd.encoded) for crd in manifest.crds}
    assert handed_over[0].name == max(sizes, key=sizes.__getitem__) == "installations.operator.tigera.io"
    assert sorted(crd.name for crd in handed_over) == sorted(sizes)
    assert [crd.name for crd in manifest.crds] == [document["metadata"]["name"] for document in in_file_order]
    assert [document for _, document in sorted(documents_largest_first(data), key=lambda read: read[0])] == in_file_order


def _types(value):
    if isinstance(value, dict):
        return {key: _types(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_types(child) for child in value]
    return type(value).__name__


def test_status_and_creation_timestamp_are_stripped():
    manifest = validate(manifest_path("v3.29.1").read_bytes())
    assert all("status" not in crd.body for crd in manifest.crds)
    assert all("creationTimestamp" not in crd.body["metadata"] for crd in manifest.crds)
    raw = real_documents()
    assert any("status" in doc for doc in raw)  # the file did carry them


def test_document_separator_inside_description_text_is_not_a_split():
    text = (b"kind: First\ndescription: |\n  before\n  ---\n  after\nplain: one\n  ---\n  two\n"
            b"---\nkind: Second\n")
    documents = parse_documents(text)
    assert [doc["kind"] for doc in documents] == ["First", "Second"]
    assert documents[0]["description"] == "before\n---\nafter\n"
    assert documents[0]["plain"] == "one --- two"
    assert [document for _, document in sorted(documents_largest_first(text))] == documents


def test_alias_bomb_is_refused_fast():
    bomb = ["a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]"]
    for level in range(1, 10):
        previous = chr(ord("a") + level - 1)
        name = chr(ord("a") + level)
        bomb.append(f"{name}: &{name} [{', '.join(['*' + previous] * 9)}]")
    started = time.monotonic()
    with pytest.raises(ManifestRejected, match="anchors or aliases"):
        parse_documents("\n".join(bomb).encode())
    assert time.monotonic() - started < 1.0


def test_a_lone_anchor_is_refused():
    with pytest.raises(ManifestRejected, match="anchors or aliases"):
        parse_documents(b"apiVersion: v1\nmetadata: &meta\n  name: x\n")


def test_stars_and_ampersands_in_text_are_not_aliases():
    documents = parse_documents(b"a: 'x && y'\nb: |\n  * bullet\n  && more\nc: 3 * 4\n")
    assert documents == [{"a": "x && y", "b": "* bullet\n&& more\n", "c": "3 * 4"}]


def test_invalid_yaml_names_the_line():
    with pytest.raises(ManifestRejected, match=r"not valid YAML at line 3"):
        parse_documents(b"apiVersion: v1\nkind: X\n  bad: [unclosed\n")


def test_empty_file_is_refused():
    with pytest.raises(ManifestRejected, match="holds no CustomResourceDefinition"):
        validate(b"---\n# nothing\n", tag=None)


def test_non_crd_object_is_refused():
    binding = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "own-everything"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
               "subjects": [{"kind": "Group", "name": "system:authenticated"}]}
    with pytest.raises(ManifestRejected,
                       match="ClusterRoleBinding own-everything.*not an apiextensions.k8s.io/v1 CustomResourceDefinition"):
        validate(dump(real_documents() + [binding]))


def test_foreign_group_is_refused():
    documents = real_documents()
    foreign = documents[0]
    foreign["spec"]["group"] = "evil.example.com"
    foreign["metadata"]["name"] = f"{foreign['spec']['names']['plural']}.evil.example.com"
    with pytest.raises(ManifestRejected, match="group 'evil.example.com'"):
        validate(dump(documents))


def test_v3_group_in_the_v1_file_is_refused():
    with pytest.raises(ManifestRejected, match="group 'projectcalico.org'"):
        validate(manifest_path("v3.32.1", "v3_projectcalico_org.yaml").read_bytes(), "v3.32.1", ApiMode.V1)


@pytest.mark.parametrize("break_it,where", [
    (lambda crd: crd["spec"].pop("scope"), "spec: 'scope' is a required property"),
    (lambda crd: crd["spec"]["names"].pop("plural"), "spec.names: 'plural' is a required property"),
    (lambda crd: crd["spec"].update(nmes={}), "spec: Additional properties are not allowed ('nmes'"),
    (lambda crd: crd["spec"]["versions"][0].update(served="yes"), "spec.versions.0.served: 'yes' is not of type 'boolean'"),
])
def test_crd_failing_the_schema_is_refused(break_it, where):
    documents = real_documents()
    break_it(documents[0])
    with pytest.raises(ManifestRejected, match="fails the CustomResourceDefinition schema") as caught:
        validate(dump(documents))
    assert where in str(caught.value)


def test_deep_schema_error_is_found():
    documents = real_documents()
    schema = documents[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"]["properties"]["x"] = {"type": "string", "minLength": "three"}
    with pytest.raises(ManifestRejected, match="minLength"):
        validate(dump(documents))


def test_duplicate_names_are_refused():
    documents = real_documents()
    with pytest.raises(ManifestRejected, match=f"CRD {documents[1]['metadata']['name']} appears twice"):
        validate(dump(documents + [documents[1]]))


def test_name_not_plural_dot_group_is_refused():
    documents = real_documents()
    documents[0]["metadata"]["name"] = "wrongname.crd.projectcalico.org"
    with pytest.raises(ManifestRejected, match="is not <plural>.<group>"):
        validate(dump(documents))


def test_two_storage_versions_are_refused():
    documents = real_documents()
    second = dict(copy.deepcopy(documents[0]["spec"]["versions"][0]), name="v2")
    documents[0]["spec"]["versions"].append(second)
    with pytest.raises(ManifestRejected, match="2 storage versions"):
        validate(dump(documents))


def test_tier_crd_missing_for_3_29_is_refused():
    documents = [d for d in real_documents() if d["metadata"]["name"] != "tiers.crd.projectcalico.org"]
    with pytest.raises(ManifestRejected, match="lacks the tiers.crd.projectcalico.org CRD"):
        validate(dump(documents), "v3.29.1")
    assert validate(manifest_path("v3.28.2").read_bytes(), "v3.28.2")  # no Tier CRD before 3.29


def test_validation_is_fast_enough_for_a_presync_hook():
    data = manifest_path("v3.32.1").read_bytes()
    validate(data, "v3.32.1")  # compile the schema once
    started = time.monotonic()
    validate(data, "v3.32.1")
    assert time.monotonic() - started < 2.0
