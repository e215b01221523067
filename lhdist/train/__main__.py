"""`python -m lhdist.train [--config X.yaml] [--section.key=value ...]`, for torchrun."""

import sys

from lhdist.cli import train_command
from lhdist.errors import run_command

if __name__ == "__main__":
    sys.exit(run_command("lhdist train", train_command, sys.argv[1:]))
