"""``python -m portrait``: the ``portrait-gen`` command line."""

import sys

from portrait.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
