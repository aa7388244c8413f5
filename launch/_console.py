"""``--help`` for console scripts: the same flag list as ``python -m``.

Kept apart from `launch._flags` on purpose: importing this module defines no
flags, so an entry point such as ``launch.local_cluster`` can use it without
accepting flags it would ignore.
"""

from __future__ import annotations

import sys
import types

from absl import flags


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
