"""``python -m tina_core.train RUN_DIR``: the trainer process (see tina_core.train.trainer)."""

import sys

from tina_core.train.trainer import main

sys.exit(main())
