"""The command-line layer every entry point shares: errors, exit codes, flag parsing.

A user error prints one line, ``PROG: error: MESSAGE``, to stderr and exits
with `EXIT_USAGE`; it never shows a traceback. Each entry point hands its
``main`` to `run`, which parses the flags with that rule and makes
``--help`` of a console script list the module's flags.

Kept apart from `launch._flags` on purpose: importing this module defines no
flags, so an entry point such as ``launch.local_cluster`` can use it without
accepting flags it would ignore. It imports no TensorFlow either.
"""

from __future__ import annotations

import sys
import types
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from absl import app, flags

EXIT_OK = 0
EXIT_FAILED = 1  # The program ran and found something wrong (a failed check).
EXIT_USAGE = 2  # A bad flag, argument or input: nothing ran.
# A preemption notice: the checkpoint is saved and the same command resumes.
# As TensorFlow's failure_handling_util._RESTARTABLE_EXIT_CODE, which a
# scheduler reads as "restart me"; strategies.Preempted is raised for it.
EXIT_PREEMPTED = 143


class UsageError(ValueError):
    """A bad flag value, combination or input: reported as one line, `EXIT_USAGE`."""


def one_line(message: object) -> str:
    """``message`` with every run of whitespace, newlines included, as one space."""
    return " ".join(str(message).split())


def fail(prog: str, message: object) -> NoReturn:
    """Prints ``PROG: error: MESSAGE`` on one line (scripts grep for it) and exits 2."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    sys.exit(EXIT_USAGE)


def check_no_positional(prog: str, argv: Sequence[str]) -> None:
    """Fails unless ``argv`` (absl's, program name first) holds only the program."""
    if len(argv) > 1:
        fail(prog, f"unexpected positional arguments {list(argv[1:])}; every option is a --flag.")


def flags_parser(prog: str) -> Callable[[list[str]], list[str]]:
    """A ``flags_parser`` for ``app.run``: a bad flag is one error line and exit 2.

    absl's own parser prints two lines and exits 1.
    """

    def parse_flags(argv: list[str]) -> list[str]:
        try:
            return flags.FLAGS(argv)
        except flags.Error as e:
            fail(prog, e)

    return parse_flags


def run(
    main: Callable[[list[str]], Any],
    prog: str,
    module: types.ModuleType | str,
    argv: list[str] | None = None,
) -> None:
    """Runs an entry point's ``main`` under absl with this module's rules.

    Args:
        main: the absl main; it receives the program name and the positional
            arguments left after the flags.
        prog: the name that starts every error line (``launch.train``).
        module: the module whose flags ``--help`` lists (its ``__name__``).
        argv: the command line, program name first; None for ``sys.argv``.
    """
    list_key_flags_in_help(module)
    app.run(main, argv=argv, flags_parser=flags_parser(prog))


def list_key_flags_in_help(module: types.ModuleType | str) -> None:
    """Makes ``--help`` list ``module``'s key flags when it runs as a console script.

    absl's ``--help`` lists the key flags of the main module, which it names by
    ``sys.argv[0]``. Under ``python -m launch.train`` that is the module's own
    file; under a console script (``tfopt-train``) it is the wrapper pip
    wrote, which defines no flags, so ``--help`` printed only "Try
    --helpfull". This registers the module's key flags (its own, and those it
    adopted with ``flags.adopt_module_key_flags``) under ``sys.argv[0]`` too,
    and gives the wrapper the module's docstring as the usage text.
    """
    name = module if isinstance(module, str) else module.__name__
    for flag in flags.FLAGS.get_key_flags_for_module(name):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    main = sys.modules.get("__main__")
    source = sys.modules.get(name)
    if main is not None and source is not None and main is not source and not main.__doc__:
        main.__doc__ = source.__doc__
