"""lorafx: mask-aware LoRA video edits for VFX compositing.

The repository's folders install as subpackages:
``server/`` -> ``lorafx.server``, ``protocol/`` -> ``lorafx.protocol``,
``host_plugins/`` -> ``lorafx.host_plugins``.
"""

__version__ = "0.1.0"
