"""`tina`: the headless command line.

The commands are Typer's (``tina_core.cli.commands``). ``tina ls`` and ``tina status RUN``, the ones
typed most (a tmux status line may run one every few seconds), are answered without it: Typer
converts every parameter through a pydantic adapter, whose import is about half of a listing's
0.3 s. Any other form of them (another option, ``--help``, a misspelling) is Typer's to parse.
"""

from __future__ import annotations

import sys
from typing import Sequence

from tina_core.credentials import redact_text
from tina_core.rundir import TinaError, tina_home
from tina_core.terminal import printable


def _listing(argv: Sequence[str]) -> int | None:
    """``[--home H] ls [--json]`` or ``[--home H] status RUN [--json]`` answered; None for the rest."""
    args = list(argv)
    home = None
    if len(args) >= 2 and args[0] == "--home":
        home, args = args[1], args[2:]
    elif args and args[0].startswith("--home="):
        home, args = args[0].partition("=")[2], args[1:]
    as_json = args[1:].count("--json") == 1
    if as_json:
        args.remove("--json")
    if args == ["ls"] or (len(args) == 2 and args[0] == "status" and not args[1].startswith("-")):
        from tina_core.cli import runs

        if args[0] == "ls":
            return runs.cli_ls(tina_home(home), as_json=as_json)
        return runs.cli_status(tina_home(home), args[1], as_json=as_json)
    return None


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        code = _listing(argv)
        if code is None:
            from tina_core.cli.commands import app

            app(args=argv)  # exits with the command's code
        sys.exit(code)
    except TinaError as e:
        # a message may quote a file's text (a run's name): each of its lines written out
        said = "\n".join(map(printable, redact_text(str(e)).split("\n")))
        print(f"tina: error: {said}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
