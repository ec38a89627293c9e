"""``python -m seraphim.ps``: run one parameter-server shard (see seraphim.ps.main)."""

import sys

from seraphim.ps.main import main

sys.exit(main())
