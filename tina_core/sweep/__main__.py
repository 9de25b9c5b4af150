"""``python -m tina_core.sweep local HOME NAME`` (the local queue's daemon) and ``python -m
tina_core.sweep task HOME NAME INDEX`` (a Slurm array task)."""

from __future__ import annotations

import sys


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "local":
        from tina_core.sweep.local import queue_main

        return queue_main(argv[1], argv[2])
    if len(argv) == 4 and argv[0] == "task":
        from tina_core.sweep.task import main as task_main

        return task_main(argv[1], argv[2], argv[3])
    print("usage: python -m tina_core.sweep local HOME NAME | task HOME NAME INDEX", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
