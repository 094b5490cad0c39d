"""The command line: `apply`, `diff`, `verify`, `validate` and `bundle`, every flag also read from the
environment."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable, NoReturn

from calico_crd_hook import __version__, logs
from calico_crd_hook.errors import EXIT_UNEXPECTED, HookError, UsageError

# preflight.ON_DOWNGRADE_CHOICES, without loading the stages before the flags are good
ON_DOWNGRADE_CHOICES = ("keep", "refuse", "apply")

log = logging.getLogger("calico_crd_hook")

ENV_PREFIX = "CALICO_CRD_HOOK_"
DEFAULT_TIMEOUT_SECONDS = 240.0  # below Helm's default 5-minute hook timeout
DEFAULT_CONCURRENCY = 4
MAX_TIMEOUT_SECONDS = 86_400.0  # a day: past that a hook is stuck, not slow
MAX_CONCURRENCY = 64


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not a usage block
        raise UsageError(f"{message}: see `calico-crd-hook {self.prog.split()[-1]} --help`")


def _env(name: str) -> str | None:
    value = os.environ.get(ENV_PREFIX + name)
    return value if value not in (None, "") else None


def _env_flag(name: str) -> bool:
    value = _env(name)
    if value is None:
        return False
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{ENV_PREFIX}{name}={value!r} is not a boolean: use true or false")


def _number(kind: type, low: float, high: float, flag: str) -> Callable[[str], float]:
    """One typed parser for every numeric flag and variable: finite, and within [low, high]."""
    def parse(text: str) -> float:
        try:
            value = kind(text.strip())
        except ValueError:
            raise UsageError(f"{flag} must be {'an integer' if kind is int else 'a number'}, "
                             f"not {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise UsageError(f"{flag} must be between {low:g} and {high:g}, not {text!r}")
        return value
    return parse


def _on_downgrade_default() -> str:
    """CALICO_CRD_HOOK_ON_DOWNGRADE, else the older CALICO_CRD_HOOK_ALLOW_DOWNGRADE=true (apply),
    else keep: what Helm itself does with crds/, and what a rollback or a Git revert needs."""
    chosen = _env("ON_DOWNGRADE")
    if chosen is not None:
        if chosen.strip().lower() not in ON_DOWNGRADE_CHOICES:
            raise UsageError(f"{ENV_PREFIX}ON_DOWNGRADE={chosen!r}: use {', '.join(ON_DOWNGRADE_CHOICES)}")
        return chosen.strip().lower()
    return "apply" if _env_flag("ALLOW_DOWNGRADE") else "keep"


def _numeric_flag(parser: argparse.ArgumentParser, flag: str, variable: str, kind: type, default: float,
                  low: float, high: float, help_text: str) -> None:
    """The variable is parsed like the flag, and a bad one is named as what it is."""
    from_env = _env(variable)
    default_value = _number(kind, low, high, ENV_PREFIX + variable)(from_env) if from_env else default
    parser.add_argument(flag, type=_number(kind, low, high, flag), default=default_value,
                        help=f"{help_text} [{ENV_PREFIX}{variable}]")


def _add_source_flags(parser: argparse.ArgumentParser, one_version: bool = True) -> None:
    if one_version:
        parser.add_argument("--version", dest="version", default=_env("VERSION"),
                            help="target Calico version, v3.29.1 or 3.29.1 [CALICO_CRD_HOOK_VERSION]")
    parser.add_argument("--manifest", default=_env("MANIFEST"),
                        help="read the manifest from this file [CALICO_CRD_HOOK_MANIFEST]")
    parser.add_argument("--bundle-dir", default=_env("BUNDLE_DIR"),
                        help="read DIR/<version>/operator-crds.yaml [CALICO_CRD_HOOK_BUNDLE_DIR]")
    parser.add_argument("--url-template", default=_env("URL_TEMPLATE"),
                        help="download URL with {version} (and {file}) [CALICO_CRD_HOOK_URL_TEMPLATE]")
    parser.add_argument("--sha256", default=_env("SHA256"),
                        help="expected sha256 of the manifest [CALICO_CRD_HOOK_SHA256]")
    parser.add_argument("--ca-bundle", default=_env("CA_BUNDLE"),
                        help="PEM CAs trusted for the download [CALICO_CRD_HOOK_CA_BUNDLE]")
    parser.add_argument("--allow-http", action="store_true", default=_env_flag("ALLOW_HTTP"),
                        help="allow a plain-http mirror URL [CALICO_CRD_HOOK_ALLOW_HTTP]")
    parser.add_argument("--require-pinned", action="store_true", default=_env_flag("REQUIRE_PINNED"),
                        help="refuse a manifest no digest pins [CALICO_CRD_HOOK_REQUIRE_PINNED]")
    parser.add_argument("--api-mode", default=_env("API_MODE") or "auto", choices=("auto", "v1", "v3"),
                        help="Calico API mode, auto-detected by default [CALICO_CRD_HOOK_API_MODE]")
    parser.add_argument("--allowed-groups", default=_env("ALLOWED_GROUPS"),
                        help="comma-separated CRD groups the manifest may hold [CALICO_CRD_HOOK_ALLOWED_GROUPS]")
    _numeric_flag(parser, "--timeout", "TIMEOUT", float, DEFAULT_TIMEOUT_SECONDS, 0.001, MAX_TIMEOUT_SECONDS,
                  "deadline for the whole run, seconds")
    parser.add_argument("--log-format", default=_env("LOG_FORMAT") or "text", choices=("text", "json"),
                        help="log and summary format [CALICO_CRD_HOOK_LOG_FORMAT]")
    parser.add_argument("--termination-log", default=_env("TERMINATION_LOG"),
                        help="write a failure's one-line reason here [CALICO_CRD_HOOK_TERMINATION_LOG]")


def _add_cluster_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--kubeconfig", default=_env("KUBECONFIG"),
                        help="kubeconfig; else $KUBECONFIG, in-cluster, ~/.kube/config [CALICO_CRD_HOOK_KUBECONFIG]")
    parser.add_argument("--on-downgrade", default=_on_downgrade_default(), choices=ON_DOWNGRADE_CHOICES,
                        help="a target older than the cluster's CRDs or running Calico: keep the newer CRDs "
                             "(exit 0), refuse (exit 4) or apply the older ones [CALICO_CRD_HOOK_ON_DOWNGRADE]")
    parser.add_argument("--allow-downgrade", dest="on_downgrade", action="store_const", const="apply",
                        help="the same as --on-downgrade apply [CALICO_CRD_HOOK_ALLOW_DOWNGRADE]")
    _numeric_flag(parser, "--concurrency", "CONCURRENCY", int, DEFAULT_CONCURRENCY, 1, MAX_CONCURRENCY,
                  "parallel apiserver requests")
    parser.add_argument("--token-file", default=_env("TOKEN_FILE"),
                        help="in-cluster ServiceAccount token path [CALICO_CRD_HOOK_TOKEN_FILE]")
    parser.add_argument("--service-ca-file", default=_env("SERVICE_CA_FILE"),
                        help="in-cluster apiserver CA path [CALICO_CRD_HOOK_SERVICE_CA_FILE]")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="calico-crd-hook",
                     description="Bring a cluster's Calico CRDs and Tiers to a target Calico version.")
    parser.add_argument("--program-version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    apply = commands.add_parser("apply", help="validate, check the cluster, apply CRDs, create Tiers")
    _add_source_flags(apply)
    _add_cluster_flags(apply)
    apply.add_argument("--dry-run", action="store_true", default=_env_flag("DRY_RUN"),
                       help="check everything, write nothing [CALICO_CRD_HOOK_DRY_RUN]")
    diff = commands.add_parser("diff", help="what the upgrade changes in each CRD; read-only, exit 1 on changes")
    _add_source_flags(diff)
    _add_cluster_flags(diff)
    diff.add_argument("--from-manifest", default=None,
                      help="compare this file with --manifest offline, instead of the cluster")
    verify = commands.add_parser("verify", help="after an upgrade: are the CRDs and Tiers the target's?")
    _add_source_flags(verify)
    _add_cluster_flags(verify)
    verify.add_argument("--repair", action="store_true", default=_env_flag("REPAIR"),
                        help="re-apply what differs through apply's safe path [CALICO_CRD_HOOK_REPAIR]")
    validate = commands.add_parser("validate", help="fetch and validate offline, touch no cluster")
    _add_source_flags(validate)
    bundle = commands.add_parser("bundle", help="download and verify manifests for air-gapped use")
    _add_source_flags(bundle, one_version=False)
    bundle.add_argument("--version", dest="versions", action="append", default=None,
                        help="a version to bundle; repeat for more [CALICO_CRD_HOOK_VERSIONS, comma-separated]")
    bundle.add_argument("--out", default=_env("OUT"), help="bundle folder [CALICO_CRD_HOOK_OUT]")
    return parser


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    log_format, termination_log = "text", None
    args = None
    try:
        args = build_parser().parse_args(argv)
        log_format, termination_log = args.log_format, args.termination_log
        logs.configure(log_format)
        from calico_crd_hook import pipeline  # the stages load only once the flags are good

        code = pipeline.run(args, started)
        _record_event(args, code, getattr(args, "outcome", "") or "done")
        return code
    except HookError as error:
        if args is not None:
            _record_event(args, error.exit_code, error.message)
        return _fail(error.message, error.exit_code, log_format, termination_log)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, log_format, termination_log)
    except Exception as error:  # the last resort: still one line, and exit 1
        if os.environ.get(ENV_PREFIX + "DEBUG"):
            raise
        return _fail(f"unexpected {type(error).__name__}: {error}; rerun with "
                     f"{ENV_PREFIX}DEBUG=1 for a traceback and report it", EXIT_UNEXPECTED,
                     log_format, termination_log)


def _record_event(args: argparse.Namespace, code: int, message: str) -> None:
    """In the Job's Pod (its name and namespace from the downward API), the outcome as an Event on
    the Pod, so `kubectl get events` and Argo CD show it. Best effort: never changes the outcome."""
    pod, namespace = os.environ.get(ENV_PREFIX + "POD_NAME"), os.environ.get(ENV_PREFIX + "POD_NAMESPACE")
    if args.command not in ("apply", "verify") or not pod or not namespace:
        return
    from calico_crd_hook.cluster import Cluster, load_credentials

    reason = "CalicoCRDsApplied" if code == 0 else "CalicoCRDsRefused"
    try:
        cluster = Cluster(load_credentials(args.kubeconfig, args.token_file, args.service_ca_file),
                          time.monotonic() + 5.0, 1)
        cluster.record_event(namespace, pod, os.environ.get(ENV_PREFIX + "POD_UID"), reason,
                             logs.scrub(message), warning=code != 0)
    except Exception as error:  # noqa: BLE001 - best effort: the run's own outcome stands
        text = error.message if isinstance(error, HookError) else f"{type(error).__name__}: {error}"
        log.warning("could not record the outcome as an Event on Pod %s/%s: %s", namespace, pod, text)


def _fail(message: str, code: int, log_format: str, termination_log: str | None) -> int:
    line = logs.scrub(f"calico-crd-hook: error: {message}")
    if log_format == "json":
        print(logs.json_line("error", message, exit_code=code), file=sys.stderr)
    else:
        print(line, file=sys.stderr)
    if termination_log:
        try:
            Path(termination_log).write_text(line[:4000] + "\n")  # kubelet keeps at most 4096 bytes
        except OSError:
            pass
    return code
