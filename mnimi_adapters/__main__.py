"""``python -m mnimi_adapters``: the guided tour of the Mnimi README (see :mod:`.demo`).

Followed by a command of ``mnimi`` (``stats``, ``show``, ``verify``, ...), it runs that
command instead, as ``mnimi`` does: ``python -m mnimi_adapters stats ~/.llm_cache``.
"""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    """Run the ``mnimi`` command ``argv`` names, else the guided tour with ``argv``."""
    from . import cli

    commands = cli.command_names()
    if any(argument in commands for argument in argv[:2]):  # `--json stats ...` too
        return cli.main(argv)
    if argv[:1] == ["--version"]:  # the tour has none of its own: the library's, as mnimi says
        return cli.main(argv)
    from .demo import main as tour

    return tour(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
