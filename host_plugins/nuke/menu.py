"""Nuke GUI start-up for lorafx: Nodes ▸ lorafx ▸ LoRA Edit. This folder must be on NUKE_PATH
(or be ~/.nuke with `nuke.pluginAddPath(...)` pointing here); see host_plugins/README.md."""

import nuke

import lorafx_nuke  # noqa: F401 -- imported now so a missing lorafx install shows at start-up

nuke.menu("Nodes").addMenu("lorafx").addCommand("LoRA Edit", "lorafx_nuke.create_node()")
