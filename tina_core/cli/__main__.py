"""``python -m tina_core.cli ...``: the same as ``tina ...``."""

from tina_core.cli import main

main()
