"""No input may crash the program: real release documents, mutated the ways a broken mirror, a bad
hand edit or a hostile file would (lines deleted, repeated, re-indented, cut short; scalars swapped
for every other kind of YAML value), must end in exit 0 or 3, never 1.

Each example runs `validate` in-process, as the CLI does; the examples are derived from a fixed seed
so a failure reproduces. FUZZ_EXAMPLES raises the count for a longer local run."""

from __future__ import annotations

import hashlib
import json
import os
import re

import pytest
from calico_crd_hook import cli
from calico_crd_hook.errors import EXIT_MANIFEST_REJECTED, EXIT_OK
from calico_crd_hook.manifest import validate_manifest
from calico_crd_hook.source import FetchedManifest
from calico_crd_hook.version import ApiMode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.bad_manifests import release_texts

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "1000"))


def _document(tag: str, file_name: str, name: str) -> str:
    return next(text for text in release_texts(tag, file_name) if f"name: {name}\n" in text)


# Small real documents, so that each example costs milliseconds: the v3.29 Tier CRD (status block,
# creationTimestamp), IPPools, the v3.32 Tier CRD (CEL rules) and a v3.32 v3-mode CRD.
SEEDS = [  # (document, API mode)
    (_document("v3.29.1", "operator-crds.yaml", "tiers.crd.projectcalico.org"), "v1"),
    (_document("v3.29.1", "operator-crds.yaml", "ippools.crd.projectcalico.org"), "v1"),
    (_document("v3.32.1", "operator-crds.yaml", "tiers.crd.projectcalico.org"), "v1"),
    (_document("v3.32.1", "v3_projectcalico_org.yaml", "tiers.projectcalico.org"), "v3"),
]

# Every kind of YAML scalar and collection PyYAML knows, and some it does not.
OTHER_VALUES = [
    "~", "null", "true", "yes", "off", "0", "-1", "0x1F", "0o17", "0b101", "1_000", "1:20", "3.5", "-.5e3",
    ".inf", "-.Inf", ".nan", "1.0e+400", "9223372036854775808", "-9223372036854775809", "9" * 5000,
    "2024-05-01", "2024-05-01T10:00:00Z", "!!binary aGVsbG8=", "!!set {a, b}", "!!omap [a: 1]",
    "!!pairs [a: 1, a: 2]", "!!str 5", "!!int '7'", "!!float '1e3'", "!!timestamp 2001-12-14",
    "!!python/object/apply:os.system [id]", "!custom x", "&anchor value", "*alias", "[]", "{}",
    "2024-02-30", "!!int many", "!!bool maybe", "!!timestamp soon", "!!map [1]", "!!seq {a: 1}", "<<: {a: 1}",
    "[1, [2, [3]]]", "{a: 1, a: 2}", "{? [a] : b}", "'quoted'", '"\\u0000"', '"\\ud800"', "|\n  block",
    "''", "'" + "x" * 70000 + "'", "[" * 80 + "]" * 80, "- a\n- b",
]

_SCALAR_LINE = re.compile(r"^(\s*(?:- )?[^:#\s][^:]*: )(\S.*)$")
_KEY = re.compile(r"^(\s*)([a-z])(\w*:)")
OWNERSHIP = ["app.kubernetes.io/managed-by: Helm", "meta.helm.sh/release-name: calico", "app.kubernetes.io/instance: x",
             "argocd.argoproj.io/tracking-id: 'a:b/c'", "helm.toolkit.fluxcd.io/name: calico", "team: network"]


def _indent(line: str) -> str:
    return line[:len(line) - len(line.lstrip())]


SHADOWS = ["shortNames: [po]", "categories: [all]", "scope: Namespaced"]
LOOK_ALIKES = {"a": "\u0430", "e": "\u0435", "o": "\u043e", "p": "\u0440", "c": "\u0441"}  # Cyrillic а е о р с
RELEASE_RULE_EDITS = {  # draw, the line at the place -> the lines that replace it
    "owner": lambda draw, line: [f"{_indent(line)}{draw(st.sampled_from(['labels', 'annotations']))}:",
                                 f"{_indent(line)}  {draw(st.sampled_from(OWNERSHIP))}", line],
    "shadow": lambda draw, line: [f"{_indent(line)}{draw(st.sampled_from(SHADOWS))}", line],
    "homoglyph": lambda draw, line: [_KEY.sub(lambda m: m.group(1) + LOOK_ALIKES.get(m.group(2), m.group(2)) + m.group(3),
                                              line, count=1)],
    "empties": lambda draw, line: ["---"] * draw(st.integers(1, 120)) + [line],
}


@st.composite
def mutated(draw) -> tuple[str, str]:
    seed, mode = draw(st.sampled_from(SEEDS))
    lines = seed.split("\n")
    for _ in range(draw(st.integers(1, 4))):
        if not lines:
            break
        index = draw(st.integers(0, len(lines) - 1))
        operation = draw(st.sampled_from(["delete", "duplicate", "nest", "unnest", "swap", "truncate", "key",
                                          "owner", "shadow", "homoglyph", "empties"]))
        line = lines[index]
        if operation in RELEASE_RULE_EDITS:  # what release_rules refuses, at a random place
            lines[index:index + 1] = RELEASE_RULE_EDITS[operation](draw, line)
        elif operation == "delete":
            del lines[index]
        elif operation == "duplicate":  # a repeated key, or a repeated list item
            lines.insert(index, line)
        elif operation == "nest":
            lines[index] = "  " * draw(st.integers(1, 3)) + line
        elif operation == "unnest":
            lines[index] = line.lstrip()
        elif operation == "truncate":
            cut = draw(st.integers(0, len(line)))
            lines = lines[:index] + [line[:cut]]
        elif operation == "key":  # a key that is not a plain string
            lines[index] = re.sub(r"^(\s*)([A-Za-z]\w*):", lambda m: m.group(1) + draw(
                st.sampled_from(["1", "~", "true", "[a]", "{a: 1}", "? x\n" + m.group(1)])) + ":", line, count=1)
        else:
            match = _SCALAR_LINE.match(line)
            if match:
                lines[index] = match.group(1) + draw(st.sampled_from(OTHER_VALUES))
    return "\n".join(lines), mode


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(example=mutated())
def test_a_mutated_release_document_never_crashes_the_program(tmp_path_factory, example):
    text, mode = example
    path = tmp_path_factory.mktemp("fuzz") / "operator-crds.yaml"
    path.write_text(text, errors="surrogatepass")
    code = cli.main(["validate", "--manifest", str(path), "--api-mode", mode, "--timeout", "30"])
    assert code in (EXIT_OK, EXIT_MANIFEST_REJECTED), text[:3000]
    if code == EXIT_OK:  # what `apply` would then send must be plain JSON, or apply would crash
        for crd in _validated(path, ApiMode(mode)).crds:
            assert json.loads(crd.encoded, parse_constant=_not_json) == crd.body, text[:3000]


def _validated(path, mode: ApiMode):
    data = path.read_bytes()
    fetched = FetchedManifest(data=data, origin=str(path), sha256=hashlib.sha256(data).hexdigest())
    return validate_manifest(fetched, None, mode, mode.default_allowed_groups)


def _not_json(constant: str) -> None:
    raise AssertionError(f"{constant} is not JSON")


@pytest.mark.parametrize("seed", range(len(SEEDS)))
def test_the_unmutated_seeds_validate(tmp_path, seed):
    path = tmp_path / "operator-crds.yaml"
    text, mode = SEEDS[seed]
    path.write_text(text)
    assert cli.main(["validate", "--manifest", str(path), "--api-mode", mode]) == EXIT_OK
