"""One retry idiom for every remote call (the apiserver and the manifest download): which HTTP
answers are worth another try, how long to wait, and a loop bounded by the run's one deadline."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

log = logging.getLogger(__name__)

RETRIED_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_SECONDS = 30.0
_LAST_TRY_MARGIN_SECONDS = 0.1

T = TypeVar("T")


@dataclass(frozen=True)
class Backoff:
    """Pauses that double from `first` up to `most` seconds."""
    first: float
    most: float

    def pause(self, tries: int) -> float:
        """The pause after the `tries`-th failed try (1 for the first)."""
        return min(self.first * 2.0 ** (tries - 1), self.most)


# A request the apiserver failed (429, 5xx) or did not answer: soon, then no more than every 5 s.
APISERVER_BACKOFF = Backoff(first=0.2, most=5.0)
# A download from GitHub or a mirror: a CDN's hiccup lasts longer than an apiserver's.
DOWNLOAD_BACKOFF = Backoff(first=0.5, most=8.0)
# A CRD just Established answers 429 with Retry-After 1 s for a moment; polling a cheap read
# faster than that lets the first write go as soon as it is served.
SERVED_POLL = Backoff(first=0.05, most=0.4)
# A CRD just created is Established within moments: poll its conditions, without busy-looping.
ESTABLISHED_POLL = Backoff(first=0.05, most=1.0)


class Retry(Exception):
    """An attempt's failure that another attempt may cure."""

    def __init__(self, problem: str, retry_after: float | None = None, answered: bool = False) -> None:
        super().__init__(problem)
        self.problem = problem
        self.retry_after = retry_after
        self.answered = answered  # the server answered (an HTTP status), rather than not at all


class GaveUp(Exception):
    """No attempt succeeded: the deadline came, or the attempts ran out."""

    def __init__(self, last: Retry, last_answer: Retry | None, deadline_reached: bool) -> None:
        super().__init__(last.problem)
        self.last = last
        self.last_answer = last_answer  # the server's last error answer, kept past a later time-out
        self.deadline_reached = deadline_reached


def retry_after(value: str | None) -> float | None:
    """A Retry-After header in seconds, capped; its HTTP-date form is left to the backoff."""
    if value and value.strip().isdigit():
        return min(float(value), MAX_RETRY_AFTER_SECONDS)
    return None


def with_retries(attempt: Callable[[], T], deadline: float, what: str, backoff: Backoff,
                 max_attempts: int | None = None) -> T:
    """attempt() until it returns; each Retry it raises waits (Retry-After, else exponential
    backoff with jitter) and tries again, keeping one last try just before the deadline."""
    tries = 0
    last_answer: Retry | None = None
    while True:
        tries += 1
        try:
            return attempt()
        except Retry as problem:
            if problem.answered:
                last_answer = problem
            if max_attempts is not None and tries >= max_attempts:
                raise GaveUp(problem, last_answer, deadline_reached=False) from None
            if problem.retry_after is not None:
                pause = problem.retry_after  # what the server asked for
            else:  # spread concurrent retries apart
                pause = backoff.pause(tries) * random.uniform(0.8, 1.2)
            pause = min(pause, deadline - time.monotonic() - _LAST_TRY_MARGIN_SECONDS)
            if pause <= 0:
                raise GaveUp(problem, last_answer, deadline_reached=True) from None
            which = f"retry {tries}/{max_attempts - 1}" if max_attempts is not None else "retrying"
            log.warning("%s: %s; %s in %.1fs", what, problem.problem, which, pause)
            time.sleep(pause)
