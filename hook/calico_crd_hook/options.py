"""Every option of the command line, declared once: its flag, its environment variable, how its
text is parsed, its default and its help (which shows the variable). `parse_options` turns the
command line and the environment into one frozen `Options` at the start; the stages take what they
need from it, and nothing else reads `CALICO_CRD_HOOK_*` or the parsed arguments."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from calico_crd_hook import __version__
from calico_crd_hook.errors import UsageError

ENV_PREFIX = "CALICO_CRD_HOOK_"
DEFAULT_TIMEOUT_SECONDS = 240.0  # below Helm's default 5-minute hook timeout
DEFAULT_CONCURRENCY = 16
MAX_TIMEOUT_SECONDS = 86_400.0  # a day: past that a hook is stuck, not slow
MAX_CONCURRENCY = 64
ON_DOWNGRADE_CHOICES = ("keep", "refuse", "apply")

Parse = Callable[[str, str], Any]  # (text, what it came from: a flag or a variable) -> value


@dataclass(frozen=True)
class Options:
    """What one run was asked to do, typed, built once."""
    command: str
    version: str | None = None
    versions: tuple[str, ...] = ()  # bundle: every version to bundle
    manifest: str | None = None
    bundle_dir: str | None = None  # apply/diff/verify/validate: read from it; bundle: write to it
    url_template: str | None = None
    sha256: str | None = None
    ca_bundle: str | None = None
    allow_http: bool = False
    require_pinned: bool = False
    allow_modified_crds: bool = False
    api_mode: str = "auto"
    allowed_groups: str | None = None
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    log_format: str = "text"
    termination_log: str | None = None
    kubeconfig: str | None = None
    token_file: str | None = None
    service_ca_file: str | None = None
    on_downgrade: str = "keep"
    concurrency: int = DEFAULT_CONCURRENCY
    dry_run: bool = False
    repair: bool = False
    from_manifest: str | None = None
    calico_api_group: str | None = None  # Calico's own CALICO_API_GROUP, which the API mode follows
    pod_name: str | None = None  # the Job's Pod (downward API): the outcome Event goes on it
    pod_namespace: str | None = None
    pod_uid: str | None = None
    debug: bool = False


def _text(value: str, _: str) -> str:
    return value


def _boolean(value: str, source: str) -> bool:
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"{source}={value!r} is not a boolean: use true or false")


def _one_of(*choices: str) -> Parse:
    def parse(value: str, source: str) -> str:
        if value.strip().lower() not in choices:
            shown = f"{source}={value!r}" if source.startswith(ENV_PREFIX) else f"{source} {value!r}"
            raise UsageError(f"invalid {shown}: use {', '.join(choices)}")
        return value.strip().lower()
    return parse


def _number(kind: type, low: float, high: float) -> Parse:
    """Finite, within [low, high]; a bad value is named as the flag or variable it came from."""
    def parse(text: str, source: str) -> Any:
        try:
            value = kind(text.strip())
        except ValueError:
            raise UsageError(f"{source} must be {'an integer' if kind is int else 'a number'}, "
                             f"not {text!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise UsageError(f"{source} must be between {low:g} and {high:g}, not {text!r}")
        return value
    return parse


class _FromEnvironment(argparse.Action):
    """A flag whose default is its environment variable, parsed as the flag is. `switch`: a flag
    without a value (true when given); `repeat`: each use adds one, the variable is comma-separated."""

    def __init__(self, option_strings: Sequence[str], dest: str, variable: str, parse: Parse = _text,
                 switch: bool = False, repeat: bool = False, default: Any = None, help: str = "",
                 **kwargs: Any) -> None:
        self.parse, self.switch, self.repeat = parse, switch, repeat
        name = ENV_PREFIX + variable
        raw = os.environ.get(name)
        if raw not in (None, ""):
            assert raw is not None
            if switch:
                default = _boolean(raw, name)
            elif repeat:
                default = tuple(parse(part.strip(), name) for part in raw.split(",") if part.strip())
            else:
                default = parse(raw, name)
        super().__init__(option_strings, dest, nargs=0 if switch else None, default=default,
                         help=f"{help} [{name}]", **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        if self.switch:
            setattr(namespace, self.dest, True)
            return
        value = self.parse(str(values), option_string or self.dest)
        if self.repeat:
            given = getattr(namespace, self.dest, None)
            value = (*(given if given is not None and given is not self.default else ()), value)
        setattr(namespace, self.dest, value)


def _add(parser: argparse.ArgumentParser, *flags: str, variable: str, **declaration: Any) -> None:
    parser.add_argument(*flags, action=_FromEnvironment, variable=variable, **declaration)


def _add_source_options(parser: argparse.ArgumentParser, bundle: bool = False) -> None:
    if bundle:
        _add(parser, "--version", dest="versions", variable="VERSIONS", repeat=True, default=(),
             help="a version to bundle; repeat for more (the variable: comma-separated)")
        _add(parser, "--bundle-dir", "--out", dest="bundle_dir", variable="BUNDLE_DIR",
             help="write DIR/<version>/<file> here")
    else:
        _add(parser, "--version", variable="VERSION", help="target Calico version, v3.29.1 or 3.29.1")
        _add(parser, "--manifest", variable="MANIFEST", help="read the manifest from this file")
        _add(parser, "--bundle-dir", variable="BUNDLE_DIR", help="read DIR/<version>/operator-crds.yaml")
    _add(parser, "--url-template", variable="URL_TEMPLATE", help="download URL with {version} (and {file})")
    _add(parser, "--sha256", variable="SHA256", help="expected sha256 of the manifest")
    _add(parser, "--ca-bundle", variable="CA_BUNDLE", help="PEM CAs trusted for the download")
    _add(parser, "--allow-http", variable="ALLOW_HTTP", switch=True, default=False,
         help="allow a plain-http mirror URL")
    _add(parser, "--require-pinned", variable="REQUIRE_PINNED", switch=True, default=False,
         help="refuse a manifest no digest pins")
    _add(parser, "--allow-modified-crds", variable="ALLOW_MODIFIED_CRDS", switch=True, default=False,
         help="apply a known release's CRDs that differ from its documents, showing the differences")
    _add(parser, "--api-mode", variable="API_MODE", parse=_one_of("auto", "v1", "v3"), default="auto",
         metavar="{auto,v1,v3}",
         help="Calico API mode, auto-detected by default")
    _add(parser, "--allowed-groups", variable="ALLOWED_GROUPS", help="comma-separated CRD groups the manifest may hold")
    _add(parser, "--timeout", variable="TIMEOUT", parse=_number(float, 0.001, MAX_TIMEOUT_SECONDS),
         default=DEFAULT_TIMEOUT_SECONDS, help="deadline for the whole run, seconds")
    _add(parser, "--log-format", variable="LOG_FORMAT", parse=_one_of("text", "json"), default="text",
         metavar="{text,json}",
         help="log and summary format")
    _add(parser, "--termination-log", variable="TERMINATION_LOG", help="write a failure's one-line reason here")


def _add_cluster_options(parser: argparse.ArgumentParser) -> None:
    _add(parser, "--kubeconfig", variable="KUBECONFIG",
         help="kubeconfig; else $KUBECONFIG, in-cluster, ~/.kube/config")
    _add(parser, "--on-downgrade", variable="ON_DOWNGRADE", parse=_one_of(*ON_DOWNGRADE_CHOICES),
         metavar="{keep,refuse,apply}",
         default="apply" if _allow_downgrade_from_environment() else "keep",
         help="a target older than the cluster's CRDs or running Calico: keep the newer CRDs (exit 0), "
              "refuse (exit 4) or apply the older ones")
    parser.add_argument("--allow-downgrade", dest="on_downgrade", action="store_const", const="apply",
                        help=f"the same as --on-downgrade apply [{ENV_PREFIX}ALLOW_DOWNGRADE]")
    _add(parser, "--concurrency", variable="CONCURRENCY", parse=_number(int, 1, MAX_CONCURRENCY),
         default=DEFAULT_CONCURRENCY, help="parallel apiserver requests")
    _add(parser, "--token-file", variable="TOKEN_FILE", help="in-cluster ServiceAccount token path")
    _add(parser, "--service-ca-file", variable="SERVICE_CA_FILE", help="in-cluster apiserver CA path")


def _allow_downgrade_from_environment() -> bool:
    """The older variable, an alias of ON_DOWNGRADE=apply; ON_DOWNGRADE wins when both are set."""
    raw = os.environ.get(ENV_PREFIX + "ALLOW_DOWNGRADE")
    return raw not in (None, "") and _boolean(str(raw), ENV_PREFIX + "ALLOW_DOWNGRADE")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not a usage block
        raise UsageError(f"{message}: see `calico-crd-hook {self.prog.split()[-1]} --help`")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="calico-crd-hook",
                     description="Bring a cluster's Calico CRDs and Tiers to a target Calico version.")
    parser.add_argument("--program-version", action="version", version=__version__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    apply = commands.add_parser("apply", help="validate, check the cluster, apply CRDs, create Tiers")
    diff = commands.add_parser("diff", help="what the upgrade changes in each CRD; read-only, exit 1 on changes")
    verify = commands.add_parser("verify", help="after an upgrade: are the CRDs and Tiers the target's?")
    validate = commands.add_parser("validate", help="fetch and validate offline, touch no cluster")
    bundle = commands.add_parser("bundle", help="download and verify manifests for air-gapped use")
    for with_cluster in (apply, diff, verify):
        _add_source_options(with_cluster)
        _add_cluster_options(with_cluster)
    _add_source_options(validate)
    _add_source_options(bundle, bundle=True)
    _add(apply, "--dry-run", variable="DRY_RUN", switch=True, default=False, help="check everything, write nothing")
    _add(diff, "--from-manifest", variable="FROM_MANIFEST",
         help="compare this file with --manifest offline, instead of the cluster")
    _add(verify, "--repair", variable="REPAIR", switch=True, default=False,
         help="re-apply what differs through apply's safe path")
    return parser


def parse_options(argv: Sequence[str] | None) -> Options:
    """The command line over the environment, as one frozen Options."""
    parsed = vars(build_parser().parse_args(argv))
    return Options(**parsed, calico_api_group=os.environ.get("CALICO_API_GROUP") or None,
                   pod_name=_environment("POD_NAME"), pod_namespace=_environment("POD_NAMESPACE"),
                   pod_uid=_environment("POD_UID"), debug=bool(_environment("DEBUG")))


def _environment(name: str) -> str | None:
    return os.environ.get(ENV_PREFIX + name) or None


def debug_requested() -> bool:
    """For an error met before the options could be parsed."""
    return bool(_environment("DEBUG"))
