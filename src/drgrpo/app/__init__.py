"""Front ends (the CLI, terminal tables, plots, explain widgets, experiments). Nothing else in
drgrpo imports this package."""
