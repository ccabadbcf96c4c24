"""``python -m ddpm``, also what ``torchrun -m ddpm`` starts in every process."""

import sys

from ddpm.cli import main

if __name__ == "__main__":
    sys.exit(main())
