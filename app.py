#!/usr/bin/env python
"""Launcher of the web demo: ``python app.py [--host 127.0.0.1] [--port 7860] [--weights DIR] ...``.

The UI ships in the package (:mod:`portrait.app.ui`); ``portrait-gen app`` is the same command.
"""

import sys

from portrait.app.ui import main

if __name__ == "__main__":
    sys.exit(main())
