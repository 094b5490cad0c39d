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
