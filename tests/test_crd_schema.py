"""The shipped CustomResourceDefinition schema is what the real apiserver's OpenAPI produces."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hook" / "tools"))
import generate_crd_schema  # noqa: E402 - after the sys.path entry above

pytestmark = pytest.mark.cluster


def test_shipped_schema_matches_the_apiserver_openapi(control_plane):
    response = control_plane.api("GET", generate_crd_schema.OPENAPI_PATH)
    assert response.status_code == 200
    from tests.support.assets import KUBERNETES_VERSION

    source = f"kube-apiserver {KUBERNETES_VERSION} {generate_crd_schema.OPENAPI_PATH}"
    regenerated = generate_crd_schema.render(generate_crd_schema.convert(response.json(), source))
    assert generate_crd_schema.SCHEMA_FILE.read_text() == regenerated
