"""Experiments built from ordinary training runs: `drgrpo experiment lineage`."""
