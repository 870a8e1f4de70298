"""`python -m tasks.ledger`: the privacy ledger's CLI under the name issue 15 gives it.

The ledger and its CLI live in `tasks.train.ledger` (see there); this module only forwards to it, so
`python -m tasks.ledger show` and `python -m tasks.train.ledger show` are one command.
"""

from __future__ import annotations

import sys

from tasks.train.ledger import main

if __name__ == "__main__":
    sys.exit(main())
