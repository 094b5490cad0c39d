"""Offline validation never weaker than the apiserver: seeded mutations of real release CRDs, each
judged by `validate` (in-process, as a file without a version) and by the real kube-apiserver's
dry-run create on a control plane of this module. A case the server rejects and `validate`
accepts fails the test, with the server's message. CEL rules are compiled by the server only
(docs/manifest-policy.md): a case whose only difference is a CEL rule is counted, not scored.

DIFFERENTIAL_CASES raises the count (500 in CI)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from calico_crd_hook.errors import ManifestRejected
from calico_crd_hook.manifest import validate_documents
from calico_crd_hook.version import ApiMode

from tests.support.calico_cluster import CRDS
from tests.support.differential import Case, cases, encoded

pytestmark = pytest.mark.cluster

COUNT = int(os.environ.get("DIFFERENTIAL_CASES", "500"))
GROUPS = ApiMode.V1.default_allowed_groups


def offline_verdict(case: Case) -> str | None:
    """None when `validate` accepts the document; its refusal otherwise."""
    try:
        validate_documents(encoded(case.document), f"case {case.index}", GROUPS)
    except ManifestRejected as refused:
        return refused.message
    return None


NO_ANSWER = 0


def server_verdict(plane, case: Case) -> tuple[int, str]:
    """(HTTP status, message); NO_ANSWER where the server closed the connection each time: v1.35.4
    panics (and recovers) validating some CRDs, e.g. selectableFields over a schema that is not
    structural (its log shows the panic in ValidFieldPath) - a CRD it never accepts."""
    for _ in range(2):
        try:
            response = plane.api("POST", CRDS, case.document, params={"dryRun": "All"})
            break
        except requests.ConnectionError as error:
            closed = str(error)
    else:
        return NO_ANSWER, f"no answer, the connection closed ({closed[:120]})"
    return response.status_code, response.json().get("message", response.text[:300]) if response.text else ""


def test_validate_refuses_everything_the_apiserver_rejects(module_control_plane):
    generated = list(cases(COUNT))
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda case: server_verdict(module_control_plane, case), generated))
    weaker, cel_only, scored = [], [], 0
    for case, (status, message) in zip(generated, answers):
        assert status in (NO_ANSWER, 201, 400, 422), (case.kinds, status, message)
        refused = offline_verdict(case)
        cel = case.touches_cel or _only_cel(message)
        if status != 201 and refused is None:
            shown = message if len(message) < 500 else f"{message[:200]} ... {message[-250:]}"
            (cel_only if cel else weaker).append(f"case {case.index} {case.kinds}: {shown}")
        scored += not cel
    print(f"\n{len(generated)} cases ({scored} scored): {len(weaker)} accepted offline and rejected by the server; "
          f"CEL, not scored: {len(cel_only)}")
    assert not weaker, "\n".join(weaker)


def _only_cel(message: str) -> bool:
    """The server's only objections are CEL rules that no longer compile (say, once a mutation
    changed the type of a field a rule reads)."""
    causes = [part for part in message.split("spec.validation.")[1:]]
    return bool(causes) and all("x-kubernetes-validations" in cause.split(":", 1)[0] for cause in causes)
