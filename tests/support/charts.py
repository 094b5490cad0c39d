"""Charts for the end-to-end tests: a small stand-in tigera-operator chart holding the real CRDs,
and an umbrella chart that depends on it with the chart patch applied."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from tests.support.calico import manifest_path

REPO = Path(__file__).resolve().parents[2]
CHART_PATCH = REPO / "chart-patch"

OPERATOR_VALUES = {
    "imagePullSecrets": {},
    "tolerations": [{"effect": "NoExecute", "operator": "Exists"}, {"effect": "NoSchedule", "operator": "Exists"}],
    "nodeSelector": {"kubernetes.io/os": "linux"},
    "affinity": {},
    "priorityClassName": "",
    "kubernetesServiceEndpoint": {"host": "", "port": "6443"},
    "goldmane": {"enabled": True},
    "whisker": {"enabled": True},
}

DEPLOYMENT = """apiVersion: apps/v1
kind: Deployment
metadata:
  name: tigera-operator
  namespace: {{ .Release.Namespace }}
spec:
  replicas: 1
  selector:
    matchLabels: {name: tigera-operator}
  template:
    metadata:
      labels: {name: tigera-operator}
    spec:
      hostNetwork: true
      containers:
        - name: tigera-operator
          image: quay.io/tigera/operator:{{ .Chart.AppVersion }}
          command: ["operator"]
"""

INSTALLATION = """apiVersion: operator.tigera.io/v1
kind: Installation
metadata:
  name: default
spec:
  variant: Calico
"""

# From v3.30 the real chart renders these kinds, whose CRDs v3.29 does not have.
GOLDMANE_AND_WHISKER = """{{- if .Values.goldmane.enabled }}
apiVersion: operator.tigera.io/v1
kind: Goldmane
metadata:
  name: default
{{- end }}
{{- if .Values.whisker.enabled }}
---
apiVersion: operator.tigera.io/v1
kind: Whisker
metadata:
  name: default
{{- end }}
"""


def operator_chart(folder: Path, tag: str) -> Path:
    """The stand-in tigera-operator chart at a Calico version, its crds/ the real release file."""
    chart = folder / "tigera-operator"
    (chart / "templates").mkdir(parents=True)
    (chart / "crds").mkdir()
    (chart / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "tigera-operator", "version": tag, "appVersion": tag,
        "description": "Test stand-in for Calico's tigera-operator chart"}))
    (chart / "values.yaml").write_text(yaml.safe_dump(OPERATOR_VALUES))
    shutil.copyfile(manifest_path(tag), chart / "crds" / "operator-crds.yaml")
    (chart / "templates" / "deployment.yaml").write_text(DEPLOYMENT)
    (chart / "templates" / "installation.yaml").write_text(INSTALLATION)
    major, minor = (int(part) for part in tag.removeprefix("v").split(".")[:2])
    if (major, minor) >= (3, 30):
        (chart / "templates" / "goldmane-whisker.yaml").write_text(GOLDMANE_AND_WHISKER)
    return chart


def apply_chart_patch(chart: Path, values: dict | None = None) -> None:
    """What the README tells a user to do: copy the templates, merge the values block."""
    for template in (CHART_PATCH / "templates").iterdir():
        shutil.copyfile(template, chart / "templates" / template.name)
    merged = yaml.safe_load((chart / "values.yaml").read_text()) if (chart / "values.yaml").exists() else {}
    merged = merged or {}
    merged.update(yaml.safe_load((CHART_PATCH / "values.yaml").read_text()))
    _deep_update(merged, values or {})
    (chart / "values.yaml").write_text(yaml.safe_dump(merged))


def umbrella_chart(folder: Path, tag: str, chart_version: str, values: dict | None = None) -> Path:
    """An umbrella chart depending on tigera-operator `tag`, with the chart patch applied."""
    chart = folder / f"calico-{chart_version}"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "calico", "version": chart_version, "appVersion": "platform",
        "dependencies": [{"name": "tigera-operator", "version": tag, "repository": "file://charts/tigera-operator"}]}))
    operator_chart(chart / "charts", tag)
    apply_chart_patch(chart, values)
    return chart


def _deep_update(target: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value
