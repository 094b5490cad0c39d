"""The failures the program reports, each with its documented exit code (README, "Exit codes")."""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_CHANGES = 1  # `diff` only: changes found, as diff and kubectl diff say it
EXIT_USAGE = 2
EXIT_MANIFEST_REJECTED = 3
EXIT_UNSAFE_UPGRADE = 4
EXIT_CLUSTER = 5


class HookError(Exception):
    """A failure with a one-line message that names the problem and the way out."""

    exit_code = EXIT_UNEXPECTED

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))

    @property
    def message(self) -> str:
        return str(self)


class UsageError(HookError):
    exit_code = EXIT_USAGE


class ManifestRejected(HookError):
    exit_code = EXIT_MANIFEST_REJECTED


class UnsafeUpgrade(HookError):
    exit_code = EXIT_UNSAFE_UPGRADE


class ClusterError(HookError):
    exit_code = EXIT_CLUSTER


class ApiError(ClusterError):
    """The apiserver refused one request (a 4xx). A cluster error (exit 5) with a message fit for
    the user, unless a caller that handles its status (404, 409, 413, 422...) decides otherwise."""

    def __init__(self, status: int, reason: str, server_message: str, method: str, path: str,
                 credentials_source: str) -> None:
        if status == 401:
            text = (f"the apiserver rejected the credentials from {credentials_source} "
                    "(401 Unauthorized): refresh the token or kubeconfig")
        elif status == 403:
            text = f"forbidden: {server_message}; grant it in the calico-crd-hook ClusterRole (docs/rbac.md)"
        else:
            text = f"{method} {path} failed with HTTP {status} {reason}: {server_message}"
        super().__init__(text)
        self.status, self.reason, self.server_message = status, reason, server_message
