"""Charts for the end-to-end tests: Calico's real tigera-operator charts (../shared/calico/charts,
else downloaded once from the GitHub release into the cache), and an umbrella chart that depends on
one of them with the chart patch applied."""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path

import requests
import yaml

from tests.support.assets import cache_root, keep_in_cache
from tests.support.calico import shared_calico_dir

REPO = Path(__file__).resolve().parents[2]
CHART_PATCH = REPO / "chart-patch"
RELEASE_ASSET_URL = "https://github.com/projectcalico/calico/releases/download/{tag}/{name}-{tag}.tgz"
CALICO_CHART_REPOSITORY = "https://docs.tigera.io/calico/charts"
# The image as a user's registry would hold it; the Job harness maps it to the local build.
JOB_IMAGE = {"registry": "registry.example.com", "repository": "calico-crd-hook", "tag": "0.1.0"}
JOB_IMAGE_NAME = "registry.example.com/calico-crd-hook:0.1.0"


def real_chart(name: str, tag: str) -> Path:
    """Calico's packaged chart `name` at `tag` (tigera-operator, or a v3.32 CRD chart)."""
    shared = shared_calico_dir()
    archive = f"{name}-{tag}.tgz"
    if shared and (shared / "charts" / archive).is_file():
        return shared / "charts" / archive
    cached = cache_root() / "calico" / "charts" / archive
    if not cached.is_file():  # no digest is published for the chart archives: TLS is the check
        response = requests.get(RELEASE_ASSET_URL.format(tag=tag, name=name), timeout=120)
        response.raise_for_status()
        keep_in_cache(cached, response.content)
    return cached


def operator_chart(folder: Path, tag: str) -> Path:
    """The real tigera-operator chart at `tag`, unpacked (to patch it in place)."""
    with tarfile.open(real_chart("tigera-operator", tag)) as archive:
        archive.extractall(folder, filter="data")
    return folder / "tigera-operator"


def apply_chart_patch(chart: Path, values: dict | None = None) -> None:
    """What the README tells a user to do: copy the templates and the values schema, merge the
    values block."""
    for template in (CHART_PATCH / "templates").iterdir():
        shutil.copyfile(template, chart / "templates" / template.name)
    shutil.copyfile(CHART_PATCH / "values.schema.json", chart / "values.schema.json")
    merged = yaml.safe_load((chart / "values.yaml").read_text()) if (chart / "values.yaml").exists() else {}
    merged = merged or {}
    merged.update(yaml.safe_load((CHART_PATCH / "values.yaml").read_text()))
    _deep_update(merged, values or {})
    (chart / "values.yaml").write_text(yaml.safe_dump(merged))


def umbrella_chart(folder: Path, tag: str, chart_version: str, values: dict | None = None,
                   extra_dependencies: tuple[tuple[str, str], ...] = ()) -> Path:
    """An umbrella chart depending on the real tigera-operator chart `tag` (default values), with
    the chart patch applied. `extra_dependencies`: more real Calico charts, as (name, tag)."""
    chart = folder / f"calico-{chart_version}"
    (chart / "templates").mkdir(parents=True)
    (chart / "charts").mkdir()
    dependencies = [("tigera-operator", tag), *extra_dependencies]
    (chart / "Chart.yaml").write_text(yaml.safe_dump({
        "apiVersion": "v2", "name": "calico", "version": chart_version, "appVersion": "platform",
        "dependencies": [{"name": name, "version": version, "repository": CALICO_CHART_REPOSITORY}
                         for name, version in dependencies]}))
    for name, version in dependencies:  # what `helm dependency build` leaves in charts/
        shutil.copyfile(real_chart(name, version), chart / "charts" / f"{name}-{version}.tgz")
    apply_chart_patch(chart, values)
    return chart


def _deep_update(target: dict, changes: dict) -> None:
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            _deep_update(target[key], value)
        else:
            target[key] = value


def hook_chart(tmp_path: Path, tag: str, chart_version: str, bundle: Path, sha256: str = "", **hook_values) -> Path:
    """The umbrella at `tag` whose hook reads the bundle from a host-path volume."""
    manifests = {"volume": {"hostPath": {"path": str(bundle), "type": "Directory"}}, "sha256": sha256}
    values = {"calicoCrdHook": {"manifests": manifests, "image": JOB_IMAGE, **hook_values}}
    return umbrella_chart(tmp_path / f"chart-{chart_version}", tag, chart_version, values)
