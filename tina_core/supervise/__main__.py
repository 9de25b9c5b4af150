"""``python -m tina_core.supervise RUN_DIR [--resume] [--daemon]``: one run's supervisor."""

import sys

from tina_core.supervise.supervisor import main

sys.exit(main())
