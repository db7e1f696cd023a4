"""Nuke start-up for lorafx (GUI, terminal and render sessions alike).

Nuke's own Python must import the `lorafx` package and its client dependencies (pyzmq,
msgpack, numpy, OpenImageIO). When they live in a separate folder built for Nuke's Python
version (see host_plugins/README.md), list it in LORAFX_PYTHONPATH (os.pathsep separated)."""

import os
import sys

for _path in filter(None, os.environ.get("LORAFX_PYTHONPATH", "").split(os.pathsep)):
    if os.path.isdir(_path) and _path not in sys.path:
        sys.path.append(_path)
