"""The command line: `apply`, `diff`, `verify`, `validate` and `bundle` (options.py declares every
flag and its environment variable), the outcome Event and the one-line failure."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from calico_crd_hook import logs, pipeline
from calico_crd_hook.client import Cluster
from calico_crd_hook.errors import EXIT_UNEXPECTED, HookError
from calico_crd_hook.kubeconfig import load_credentials
from calico_crd_hook.options import ENV_PREFIX, Options, debug_requested, parse_options

log = logging.getLogger("calico_crd_hook")


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    log_format, termination_log = "text", None
    options = None
    try:
        options = parse_options(argv)
        log_format, termination_log = options.log_format, options.termination_log
        logs.configure(log_format)
        outcome = pipeline.run(options, started)
        _record_event(options, outcome.code, outcome.message)
        return outcome.code
    except HookError as error:
        if options is not None:
            _record_event(options, error.exit_code, error.message)
        return _fail(error.message, error.exit_code, log_format, termination_log)
    except KeyboardInterrupt:
        return _fail("interrupted", 130, log_format, termination_log)
    except Exception as error:  # the last resort: still one line, and exit 1
        if options.debug if options is not None else debug_requested():
            raise
        return _fail(f"unexpected {type(error).__name__}: {error}; rerun with "
                     f"{ENV_PREFIX}DEBUG=1 for a traceback and report it", EXIT_UNEXPECTED,
                     log_format, termination_log)


def _record_event(options: Options, code: int, message: str) -> None:
    """In the Job's Pod (its name and namespace from the downward API), the outcome as an Event on
    the Pod, so `kubectl get events` and Argo CD show it. Best effort: never changes the outcome."""
    if options.command not in ("apply", "verify") or not options.pod_name or not options.pod_namespace:
        return
    reason = "CalicoCRDsApplied" if code == 0 else "CalicoCRDsRefused"
    try:
        cluster = Cluster(load_credentials(options.kubeconfig, options.token_file, options.service_ca_file),
                          time.monotonic() + 5.0, 1)
        cluster.record_event(options.pod_namespace, options.pod_name, options.pod_uid, reason,
                             logs.scrub(message), warning=code != 0)
    except Exception as error:  # noqa: BLE001 - best effort: the run's own outcome stands
        text = error.message if isinstance(error, HookError) else f"{type(error).__name__}: {error}"
        log.warning("could not record the outcome as an Event on Pod %s/%s: %s", options.pod_namespace,
                    options.pod_name, text)


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
