"""The RL trainer: a run's state (`run`), one step (`rl_step`), the optimizer updates (`update`),
metrics, checkpoints, logs, and the session (`trainer.train`)."""
