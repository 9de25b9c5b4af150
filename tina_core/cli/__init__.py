"""`tina`: the headless command line.

The commands are Typer's (``tina_core.cli.commands``). ``tina ls`` and ``tina status RUN``, the ones
typed most (a tmux status line may run one every few seconds), are answered without it: Typer
converts every parameter through a pydantic adapter, whose import is about half of a listing's
0.3 s. Any other form of them (another option, ``--help``, a misspelling) is Typer's to parse.

``--home DIR`` is taken anywhere on the line (``tina ls --home DIR`` too), and a reader that goes
away (``tina ls | head``) ends the command quietly, as it would end ``cat``.
"""

from __future__ import annotations

import os
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


def home_first(argv: Sequence[str]) -> list[str]:
    """``argv`` with ``--home DIR`` (or ``--home=DIR``) moved before the subcommand, wherever it was
    given (Typer takes the group's options only there); after ``--`` nothing is moved."""
    front, rest, args = [], [], list(argv)
    while args:
        a = args.pop(0)
        if a == "--":
            rest += [a, *args]
            break
        if a == "--home" and args:
            front += [a, args.pop(0)]
        elif a.startswith("--home="):
            front.append(a)
        else:
            rest.append(a)
    return front + rest


def main(argv: Sequence[str] | None = None) -> None:
    argv = home_first(sys.argv[1:] if argv is None else argv)
    try:
        try:
            code = _listing(argv)
            if code is None:
                from tina_core.cli.commands import app

                app(args=argv)  # exits with the command's code
            sys.exit(code)
        finally:
            sys.stdout.flush()  # a reader gone away (`| head`) is found here, not as the interpreter exits
    except BrokenPipeError:
        # nobody reads on: the rest goes nowhere, quietly (128 + SIGPIPE, as a shell tool ends)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except TinaError as e:
        # a message may quote a file's text (a run's name): each of its lines written out
        said = "\n".join(map(printable, redact_text(str(e)).split("\n")))
        print(f"tina: error: {said}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
