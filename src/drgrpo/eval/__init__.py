"""Evaluation of a policy on a task's held-out examples: accuracy, pass@k, lengths."""

from drgrpo.eval.evaluate import evaluate, evaluate_model, pass_at_k

__all__ = ["evaluate", "evaluate_model", "pass_at_k"]
