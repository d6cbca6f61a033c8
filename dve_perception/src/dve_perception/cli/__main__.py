"""`python -m dve_perception.cli` runs the `dve-perception` command."""

from __future__ import annotations

import sys

from dve_perception.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
