"""Regex exclusion lists: which variables skip a per-layer rule.

Keras' ``Optimizer.exclude_from_weight_decay(var_names=[...])`` matches
patterns with ``re.search`` against a variable's name. The lists here
(``exclude_from_layer_adaptation`` in LARS and LAMB) follow the same style,
but match the variable's ``path`` when it has one (``"dense_1/bias"``), so a
pattern can name a layer as well as a weight. Plain ``tf.Variable`` objects
have no ``path``: their ``name`` (``"dense_1/bias:0"``) is used instead, which
is what keeps the lists working for ``tf.Module`` code and for the per-replica
``tf.Variable`` components Keras hands to ``update_step`` under
``tf.distribute``.

Decide once, in ``build()``, where the Keras variables (with paths) are at
hand; ``update_step`` then only looks the decision up by variable index.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from tfopt._validation import check_patterns


def compile_patterns(argument: str, patterns: Sequence[str] | None) -> re.Pattern[str] | None:
    """Validates a list of regexes and joins it into one pattern.

    Args:
      argument: the constructor argument's name, for error messages.
      patterns: ``None`` or a list of regular expressions.

    Returns:
      One compiled pattern matching any of ``patterns``, or ``None`` when the
      list is empty or ``None``.

    Raises:
      ValueError: ``patterns`` is a bare string (a common slip that would
        otherwise match every character separately), not a list of strings,
        or holds an invalid regular expression.
    """
    check_patterns(argument, patterns)
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{p})" for p in patterns))


def variable_name(variable: Any) -> str:
    """The string the patterns are matched against: ``path``, else ``name``."""
    path = getattr(variable, "path", None)
    return str(path) if path else str(variable.name)


def is_excluded(variable: Any, pattern: re.Pattern[str] | None) -> bool:
    """Whether ``pattern`` is found (``re.search``) in the variable's name."""
    return pattern is not None and pattern.search(variable_name(variable)) is not None
