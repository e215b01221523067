"""`python -m lhdist ...` is the `lhdist` command."""

import sys

from lhdist.cli import main

if __name__ == "__main__":
    sys.exit(main())
