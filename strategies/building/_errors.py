"""The one exception type every user-facing strategy error is raised as."""

from __future__ import annotations

from collections.abc import Iterable


class StrategyError(ValueError):
    """A strategy, flag, ``TF_CONFIG`` or cluster value that cannot work.

    The message is one sentence that names the offending flag or key, the value
    received, the valid choices and how to fix it, so that a launcher can print
    it on one line without a traceback. It subclasses ``ValueError`` because
    every case is a bad value supplied by the caller or the environment.
    """


def invalid(key: str, received: object, expected: str, fix: str | None = None) -> StrategyError:
    """Returns a `StrategyError` for ``key`` in the project's one-sentence form.

    Args:
        key: The flag or config key at fault, e.g. ``"worker_hosts"``.
        received: The value that was given.
        expected: What would have been valid, e.g. ``"one of ['a', 'b']"``.
        fix: How to fix it, when that is not obvious from ``expected``.
    """
    fix_part = f"; {fix}" if fix else ""
    return StrategyError(f"`{key}` must be {expected}{fix_part}. Received: {key}={received!r}.")


def one_of(choices: Iterable[object]) -> str:
    """Formats valid choices for `invalid`'s ``expected`` argument."""
    return "one of " + ", ".join(repr(c) for c in choices)
