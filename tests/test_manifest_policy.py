"""The manifest policy, offline: every bad manifest is refused by `validate` with exit 3 and a
one-line message naming the CRD, the field path and the rule; every real release file passes.

Each file is a mirror operator's copy pinned by its own `--sha256`, the documented way to use a
mirror, so that the policy (not the shipped digest) is what must catch it. For a known version a
modified document is refused as such first; the rules themselves are shown with modified CRDs
allowed (they still apply then) and without a version."""

from __future__ import annotations

import copy
import re

import pytest
import yaml
from calico_crd_hook import cli
from calico_crd_hook.errors import EXIT_MANIFEST_REJECTED, EXIT_OK

from tests.support.bad_manifests import (
    BAD_TIERS,
    TIER_CRD,
    dump,
    manifest_with,
    manifest_with_tier_text,
    real_documents,
    tier_document,
    validate_pinned,
)
from tests.support.calico import manifest_path, release_files

# The last clause of every refusal says what to do.
WAY_OUT = re.compile(r"[:;] (use|fetch|pass|check|quote|remove|give)\b[^;:]*$")


def validate(capsys, tmp_path, data: bytes, version: str | None = "v3.29.1", *extra: str,
             file_name: str = "operator-crds.yaml") -> tuple[int, str, str]:
    return validate_pinned(capsys, tmp_path, data, *extra, *(["--version", version] if version else []),
                           file_name=file_name)


def assert_refused(code: int, error: str, message: str) -> None:
    assert code == EXIT_MANIFEST_REJECTED, error
    assert message in error
    assert WAY_OUT.search(error), error  # the problem, then the way out


MODIFIED_ALLOWED = "--allow-modified-crds"


@pytest.mark.parametrize("case", list(BAD_TIERS))
def test_bad_crd_is_refused_offline(capsys, tmp_path, case):
    bad = BAD_TIERS[case]
    extra = ["--allowed-groups", bad.allowed_groups] if bad.allowed_groups else []
    code, error, _ = validate(capsys, tmp_path, manifest_with(bad), "v3.29.1", *extra, MODIFIED_ALLOWED)
    assert_refused(code, error, bad.message)
    assert error.startswith("calico-crd-hook: error: CRD ") or "in one mapping" in error  # names the CRD


# One case of each kind of edit: the schema, the names, the versions, the metadata, what the parser
# refuses, a renamed CRD, a release rule.
# The parser refuses its cases before any document is judged; a renamed CRD is no release's, so its
# own rules judge it. Every other edit is refused as not the release's document.
JUDGED_BEFORE_THE_RELEASE = {"duplicate key flips the scope": "the parser", "int64 overflow": "the parser",
                             "plural with capitals": "renamed"}


@pytest.mark.parametrize("case", ["scope Galaxy", "listKind equals kind", "two storage versions", "uniqueItems",
                                  "ownerReferences", "duplicate key flips the scope", "int64 overflow",
                                  "plural with capitals", "Helm's managed-by label", "a homoglyph property"])
def test_a_known_release_refuses_any_modified_document_first(capsys, tmp_path, case):
    bad = BAD_TIERS[case]
    code, error, _ = validate(capsys, tmp_path, manifest_with(bad), "v3.29.1")
    if case in JUDGED_BEFORE_THE_RELEASE:
        return assert_refused(code, error, bad.message)
    assert_refused(code, error, f"CRD {TIER_CRD} differs from Calico v3.29.1's document at ")
    assert "pass --allow-modified-crds to apply modified CRDs" in error


def _tier_yaml_with(line_after: str, addition: str) -> bytes:
    """The v3.29.1 file with a line of YAML added inside the Tier CRD, where a dict cannot say it."""
    tier_text = yaml.dump(tier_document(real_documents()), Dumper=yaml.CSafeDumper, sort_keys=False)
    assert line_after in tier_text
    return manifest_with_tier_text(tier_text.replace(line_after, line_after + addition, 1))


ORDER = "              order:\n"
ORDER_TYPE = "                type: number\n"

YAML_VALUES = {
    "binary default": (_tier_yaml_with(ORDER_TYPE, "                default: !!binary aGVsbG8=\n"),
                       "properties.order.default: YAML !!binary is not a JSON value"),
    "unquoted date example": (_tier_yaml_with(ORDER_TYPE, "                example: 2024-05-01\n"),
                              "properties.order.example: a YAML timestamp (quote it) is not a JSON value"),
    "set example": (_tier_yaml_with(ORDER_TYPE, "                example: !!set {a, b}\n"),
                    "tags a collection as !!set at line"),
    "omap example": (_tier_yaml_with(ORDER_TYPE, "                example: !!omap [a: 1]\n"),
                     "tags a collection as !!omap at line"),
    # PyYAML's own constructors raise ValueError, KeyError or AttributeError on these: no crash here
    "impossible date": (_tier_yaml_with(ORDER_TYPE, "                example: 2024-02-30\n"),
                        "'2024-02-30' at line"),
    "tagged int that is not one": (_tier_yaml_with(ORDER_TYPE, "                maximum: !!int many\n"),
                                   "'many' at line"),
    "tagged bool that is not one": (_tier_yaml_with(ORDER_TYPE, "                example: !!bool maybe\n"),
                                    "is not a valid YAML !!bool"),
    "tagged timestamp that is not one": (_tier_yaml_with(ORDER_TYPE, "                example: !!timestamp soon\n"),
                                         "is not a valid YAML !!timestamp"),
    "map tag on a list": (_tier_yaml_with(ORDER_TYPE, "                example: !!map [1]\n"),
                          "tags a collection as !!map"),
    "merge key": (_tier_yaml_with(ORDER_TYPE, "                example:\n                  <<: {a: 1}\n"),
                  "has a mapping key that is not a string"),
    "infinite maximum": (_tier_yaml_with(ORDER_TYPE, "                maximum: .inf\n"),
                         "properties.order.maximum: inf is not a finite number"),
    "nan minimum": (_tier_yaml_with(ORDER_TYPE, "                minimum: .nan\n"),
                    "properties.order.minimum: nan is not a finite number"),
    "float overflowing to infinity": (_tier_yaml_with(ORDER_TYPE, "                maximum: 1.0e+400\n"),
                                      "inf is not a finite number"),
    "integer past int64": (_tier_yaml_with(ORDER_TYPE, "                maxLength: 9223372036854775808\n"),
                           "the integer 9223372036854775808 does not fit in int64"),
    "integer past Python's digit limit": (_tier_yaml_with(ORDER_TYPE, "                maximum: " + "9" * 5000 + "\n"),
                                          "has 5000 characters, far past int64"),
    "integer mapping key": (_tier_yaml_with(ORDER_TYPE, "                example:\n                  1: one\n"),
                            "has a mapping key that is not a string at line"),
    "null mapping key": (_tier_yaml_with(ORDER_TYPE, "                example:\n                  ~: one\n"),
                         "has a mapping key that is not a string"),
    "duplicate property": (_tier_yaml_with(ORDER, "                type: string\n"),
                           "repeats the key 'type' in one mapping"),
    "nested past 64 levels": (_tier_yaml_with(ORDER_TYPE, "                example: " + "[" * 70 + "]" * 70 + "\n"),
                              "properties.order.example[0][0]"),
    "python object tag": (_tier_yaml_with(ORDER_TYPE, "                example: !!python/object/apply:os.system [id]\n"),
                          "tags a collection as !!python/object/apply:os.system at line"),
    "unknown scalar tag": (_tier_yaml_with(ORDER_TYPE, "                example: !custom x\n"),
                           "is not valid YAML"),
}


@pytest.mark.parametrize("case", list(YAML_VALUES))
def test_yaml_that_json_cannot_carry_is_refused(capsys, tmp_path, case):
    data, message = YAML_VALUES[case]
    code, error, _ = validate(capsys, tmp_path, data)
    assert_refused(code, error, message)


def test_nesting_message_names_the_limit(capsys, tmp_path):
    code, error, _ = validate(capsys, tmp_path, YAML_VALUES["nested past 64 levels"][0])
    assert_refused(code, error, "nested deeper than 64 levels")


def test_a_huge_crd_is_refused_before_any_request(capsys, tmp_path):
    documents = real_documents()
    tier_document(documents)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = "x" * (4 << 20)
    code, error, _ = validate(capsys, tmp_path, dump(documents), "v3.29.1", MODIFIED_ALLOWED)
    assert_refused(code, error, f"CRD {TIER_CRD}: the whole CRD: 419")
    assert "bytes of JSON is over the 1572864-byte cap per CRD" in error


def renamed_copy(document: dict, plural: str) -> dict:
    """Another valid CRD of the same group: each filler passes its own checks, only the count fails."""
    import copy

    renamed = copy.deepcopy(document)
    renamed["metadata"]["name"] = f"{plural}.{renamed['spec']['group']}"
    kind = plural.capitalize()
    renamed["spec"]["names"] = {"plural": plural, "singular": plural, "kind": kind, "listKind": f"{kind}List"}
    return renamed


def test_too_many_documents_are_refused(capsys, tmp_path):
    documents = real_documents()
    filler = [renamed_copy(tier_document(documents), f"filler{index}") for index in range(80)]
    code, error, _ = validate(capsys, tmp_path, dump(documents + filler))
    assert_refused(code, error, "holds more than 100 documents")


# --- the release's CRD set -------------------------------------------------------------------------

def _without(name: str) -> bytes:
    return dump([d for d in real_documents() if d["metadata"]["name"] != name])


def _plus_renamed_copy() -> bytes:
    documents = real_documents()
    extra = copy.deepcopy(tier_document(documents))
    extra["spec"]["names"].update(plural="tierz", singular="tierz", kind="Tierz", listKind="TierzList")
    extra["metadata"]["name"] = "tierz.crd.projectcalico.org"
    return dump(documents + [extra])


def _plus_licensekeys() -> bytes:
    documents = real_documents()
    extra = copy.deepcopy(tier_document(documents))
    extra["spec"]["names"].update(plural="licensekeys", singular="licensekey", kind="LicenseKey",
                                  listKind="LicenseKeyList")
    extra["metadata"]["name"] = "licensekeys.crd.projectcalico.org"
    return dump(documents + [extra])


@pytest.mark.parametrize("case,version,data,message", [
    ("an extra CRD", "v3.29.1", _plus_renamed_copy,
     "the manifest's CRDs are not Calico v3.29.1's (operator-crds.yaml): 1 not in that release (tierz.crd.projectcalico.org)"),
    ("a missing CRD", "v3.29.1", lambda: _without("ippools.crd.projectcalico.org"),
     "1 missing (ippools.crd.projectcalico.org)"),
    ("an Enterprise CRD", "v3.29.1", _plus_licensekeys,
     "CRD licensekeys.crd.projectcalico.org belongs to Calico Enterprise"),
    ("the 3.29 file for 3.30", "v3.30.7", lambda: manifest_path("v3.29.1").read_bytes(),
     "8 missing (baselineadminnetworkpolicies.policy.networking.k8s.io, "),
    ("the 3.28 file for 3.28's sibling set", "v3.26.0", lambda: manifest_path("v3.28.2").read_bytes(),
     "the manifest is the file of Calico v3.28.0, not of v3.26.0"),
    ("the 3.30 file for 3.31", "v3.31.7", lambda: manifest_path("v3.30.7").read_bytes(),
     "the manifest is the file of Calico v3.30.7, not of v3.31.7"),
    ("the 3.32 file for 3.29", "v3.29.1", lambda: manifest_path("v3.32.1").read_bytes(),
     "not in that release (clusternetworkpolicies.policy.networking.k8s.io"),
])
def test_a_set_other_than_the_release_is_refused(capsys, tmp_path, case, version, data, message):
    code, error, _ = validate(capsys, tmp_path, data(), version)
    assert_refused(code, error, message)


def test_a_set_refusal_names_the_release_it_matches(capsys, tmp_path):
    code, error, _ = validate(capsys, tmp_path, manifest_path("v3.29.1").read_bytes(), "v3.30.7")
    assert_refused(code, error, "that is the set of Calico v3.29.0 to v3.29.7")


def test_an_edited_document_of_the_right_release_is_refused_unless_modified_crds_are_allowed(capsys, tmp_path):
    documents = real_documents()
    tier_document(documents)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["description"] = "mirrored"
    del tier_document(documents)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["kind"]
    edited = dump(documents)

    code, error, _ = validate(capsys, tmp_path, edited)

    assert_refused(code, error, f"CRD {TIER_CRD} differs from Calico v3.29.1's document at "
                   "spec.versions[0].schema.openAPIV3Schema.description (added)")

    code, error, err = validate(capsys, tmp_path, edited, "v3.29.1", MODIFIED_ALLOWED)

    assert code == EXIT_OK, err
    assert (f"CRD {TIER_CRD} differs from Calico v3.29.1's document (--allow-modified-crds): "
            "spec.versions[0].schema.openAPIV3Schema.description (added); "
            "spec.versions[0].schema.openAPIV3Schema.properties.kind (removed)") in err


def test_reformatted_release_file_is_the_same_release(capsys, tmp_path):
    """The document digest is over canonical JSON: a mirror that re-serializes the YAML still matches."""
    documents = list(reversed(real_documents()))
    code, error, err = validate(capsys, tmp_path, dump(documents, sort_keys=True, width=70))
    assert code == EXIT_OK, err
    assert "differ" not in err and "unchecked" not in err


def test_a_version_newer_than_the_table_warns_that_the_set_is_unchecked(capsys, tmp_path):
    code, error, err = validate(capsys, tmp_path, manifest_path("v3.32.1").read_bytes(), "v3.33.0")
    assert code == EXIT_OK, err
    assert "the CRD set of Calico v3.33.0 is unchecked: the shipped table covers releases v3.26.0 to v3.32.1" in err


def test_group_rules_still_apply_to_a_version_newer_than_the_table(capsys, tmp_path):
    documents = real_documents("v3.32.1")
    documents[0]["spec"]["group"] = "evil.example.com"
    documents[0]["metadata"]["name"] = f"{documents[0]['spec']['names']['plural']}.evil.example.com"
    code, error, _ = validate(capsys, tmp_path, dump(documents), "v3.33.0")
    assert_refused(code, error, "is in group 'evil.example.com'")


# --- what must not change ---------------------------------------------------------------------------

@pytest.mark.parametrize("tag,file_name", release_files())
def test_every_real_release_file_validates_with_its_shipped_digest(capsys, tag, file_name):
    mode = "v3" if file_name.startswith("v3_") else "v1"
    code = cli.main(["validate", "--version", tag, "--api-mode", mode, "--log-format", "json",
                     "--manifest", str(manifest_path(tag, file_name))])
    captured = capsys.readouterr()
    assert code == EXIT_OK, captured.err
    assert "warning" not in captured.err


@pytest.mark.parametrize("metadata", [None, "tiers", {"labels": {"a": "b"}}, {"name": None}, {"name": 5}])
def test_a_crd_without_a_name_is_refused(capsys, tmp_path, metadata):
    """Found by the fuzz test: a CRD whose metadata block was lost crashed the run."""
    documents = real_documents()
    if metadata is None:
        del tier_document(documents)["metadata"]
    else:
        tier_document(documents)["metadata"] = metadata
    code, error, _ = validate(capsys, tmp_path, dump(documents))
    assert_refused(code, error, "has no metadata.name")
