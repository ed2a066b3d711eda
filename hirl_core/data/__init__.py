"""Data: Fashion-MNIST (Debian's idx files), the seed's ImageFolder layout, CSV lists (csv, places205).

This package's top level stays torch-free (the orchestrator validates data paths before submitting);
the dataset builders live in `hirl_core.data.build`.
"""
from .paths import check_data, resolve_root

__all__ = ["check_data", "resolve_root"]
