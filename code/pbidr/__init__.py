"""PBIDR-py: facial geometric detail recovery via an implicit representation (Ren et al., FG 2023)."""

__version__ = "0.1.0"
