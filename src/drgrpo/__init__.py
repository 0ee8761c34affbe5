"""drgrpo: Dr.GRPO and its lineage."""

__version__ = "0.1.0"
