"""``python -m mnimi_adapters``: the guided tour of the Mnimi README (see :mod:`.demo`)."""

from __future__ import annotations

import sys

from .demo import main

if __name__ == "__main__":
    sys.exit(main())
