"""Side-by-side benchmarks of drgrpo against peer libraries (run `python -m benchmarks.vs_trl`)."""
