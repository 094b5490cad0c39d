"""Where to reach the apiserver and how to authenticate: a kubeconfig, or the in-cluster
ServiceAccount, in client-go's order. The kubernetes package is imported only for kubeconfigs
whose user runs an exec or auth-provider plugin."""

from __future__ import annotations

import base64
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from calico_crd_hook.errors import UsageError

IN_CLUSTER_TOKEN_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/token"
IN_CLUSTER_CA_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


@dataclass
class Credentials:
    server: str
    ca_file: str | None = None
    token: str | None = field(default=None, repr=False)  # a secret: never in a repr or a log
    token_file: str | None = None
    client_cert_file: str | None = None
    client_key_file: str | None = None
    source: str = ""
    _temporary_dir: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    def bearer_token(self) -> str | None:
        if self.token_file:  # re-read: projected ServiceAccount tokens rotate
            return Path(self.token_file).read_text().strip()
        return self.token


def load_credentials(kubeconfig: str | None, token_file: str | None = None,
                     service_ca_file: str | None = None) -> Credentials:
    """client-go's order, so a Pod whose $KUBECONFIG names another cluster talks to that one, as
    kubectl there would: --kubeconfig, then $KUBECONFIG, then the in-cluster ServiceAccount (inside
    a Pod), then ~/.kube/config."""
    if kubeconfig:
        return _from_kubeconfig(Path(kubeconfig))
    from_environment = os.environ.get("KUBECONFIG", "").split(os.pathsep)[0]
    if from_environment:
        return _from_kubeconfig(Path(from_environment))
    host = os.environ.get("KUBERNETES_SERVICE_HOST")
    if host:
        return _in_cluster(host, os.environ.get("KUBERNETES_SERVICE_PORT", "443"),
                           token_file or IN_CLUSTER_TOKEN_FILE, service_ca_file or IN_CLUSTER_CA_FILE)
    return _from_kubeconfig(Path.home() / ".kube" / "config")


def _in_cluster(host: str, port: str, token_file: str, ca_file: str) -> Credentials:
    for path, what in ((token_file, "ServiceAccount token"), (ca_file, "cluster CA")):
        if not Path(path).is_file():
            raise UsageError(f"in-cluster {what} {path} is missing: mount the ServiceAccount token "
                             "(automountServiceAccountToken) or pass --kubeconfig")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 service address
    return Credentials(server=f"https://{host}:{port}", ca_file=ca_file, token_file=token_file,
                       source="in-cluster ServiceAccount")


def _from_kubeconfig(path: Path) -> Credentials:
    try:
        config = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise UsageError(f"kubeconfig {path} does not exist: pass --kubeconfig, or run inside the "
                         "cluster") from None
    except (OSError, yaml.YAMLError) as error:
        raise UsageError(f"cannot read kubeconfig {path}: {type(error).__name__}") from None
    context_name = config.get("current-context")
    context = _named(config.get("contexts"), context_name, "context", path)
    cluster = _named(config.get("clusters"), context.get("cluster"), "cluster", path)
    user = _named(config.get("users"), context.get("user"), "user", path) if context.get("user") else {}
    if cluster.get("insecure-skip-tls-verify"):
        raise UsageError(f"kubeconfig {path} sets insecure-skip-tls-verify: calico-crd-hook always "
                         "verifies the apiserver's certificate; give the cluster's CA instead")
    if "exec" in user or "auth-provider" in user:
        return _with_kubernetes_client(path)
    credentials = Credentials(server=cluster["server"].rstrip("/"), source=f"kubeconfig {path}")
    holder = tempfile.TemporaryDirectory(prefix="calico-crd-hook-")
    credentials._temporary_dir = holder
    credentials.ca_file = _file_or_data(cluster, "certificate-authority", holder.name, path)
    credentials.client_cert_file = _file_or_data(user, "client-certificate", holder.name, path)
    credentials.client_key_file = _file_or_data(user, "client-key", holder.name, path)
    credentials.token = user.get("token")
    credentials.token_file = _existing(user.get("tokenFile"), "tokenFile", path)
    return credentials


def _named(items: Any, name: str | None, what: str, path: Path) -> dict[str, Any]:
    for item in items or []:
        if item.get("name") == name:
            return item.get(what) or {}
    raise UsageError(f"kubeconfig {path} has no {what} named {name!r}: fix current-context")


def _file_or_data(section: dict[str, Any], key: str, folder: str, path: Path) -> str | None:
    if section.get(key):
        return _existing(section[key], key, path)
    data = section.get(f"{key}-data")
    if not data:
        return None
    target = Path(folder) / key
    target.write_bytes(base64.b64decode(data))
    target.chmod(0o600)
    return str(target)


def _existing(named: str | None, key: str, path: Path) -> str | None:
    """A file the kubeconfig names, relative to the kubeconfig as kubectl reads it; it must exist."""
    if not named:
        return None
    referenced = Path(named) if Path(named).is_absolute() else path.parent / named
    if not referenced.is_file():
        raise UsageError(f"kubeconfig {path}: {key} names {referenced}, which does not exist: "
                         "fix the kubeconfig, or mount the file")
    return str(referenced)


def _with_kubernetes_client(path: Path) -> Credentials:
    """exec and auth-provider plugins: let the official client run them, then take its result."""
    try:  # only here: a large, slow import (bench/results.md), and an optional one the image leaves out
        from kubernetes import client, config
    except ImportError:
        raise UsageError(f"the kubeconfig {path} runs an exec or auth-provider plugin, which needs the "
                         "kubernetes package: pip install 'calico-crd-hook[exec]' (a Pod uses its "
                         "ServiceAccount and never needs it)") from None

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)  # type: ignore[no-untyped-call]  # the client has no type hints
    authorization = (configuration.api_key or {}).get("authorization", "")
    return Credentials(server=configuration.host.rstrip("/"), ca_file=configuration.ssl_ca_cert,
                       token=authorization.removeprefix("Bearer ").strip() or None,
                       client_cert_file=configuration.cert_file, client_key_file=configuration.key_file,
                       source=f"kubeconfig {path} (auth plugin)")
