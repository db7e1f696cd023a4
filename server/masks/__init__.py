"""Mattes: per-frame operations and training-mask derivation (`ops`), and SAM2 click
propagation (`sam2`, optional dependency, imported lazily). Matte convention: 1 = change."""
