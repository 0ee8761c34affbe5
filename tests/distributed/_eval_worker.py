"""`torchrun --nproc-per-node 2 _eval_worker.py OUT_DIR`: the held-out evaluation split over
2 ranks against 1 process, computed in this process on rank 0 (no collective) from the same
weights. Batches of 2 rows over 5 prompts x 2 samples: 5 batches, 3 on rank 0 and 2 on rank 1
(greedy: 3 batches, 2 and 1), so the ranks make different numbers of generate calls.

    plain      a replicated model, the fast decode path on both sides
    sharded    an FSDP2 root behind GatheredEngine, gathered once (`hold`) for the whole
               evaluation, against the plain model's generic decode path (the one a sharded
               model takes)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch

torch.set_num_threads(1)

from drgrpo.eval import evaluate  # noqa: E402
from drgrpo.models import build_model, build_tokenizer  # noqa: E402
from drgrpo.rollout import HFRolloutEngine, TokenRule  # noqa: E402
from drgrpo.tasks import make_task  # noqa: E402
from drgrpo.train import distributed as D  # noqa: E402
from drgrpo.train import sharded as S  # noqa: E402


def grade(texts, problems):
    """Deterministic, text-dependent verdicts (an untrained model never solves the task)."""
    rewards = [sum(c.isdigit() for c in t) / max(len(t), 1) for t in texts]
    correct = [len(t) % 2 == 0 for t in texts]
    return SimpleNamespace(rewards=rewards, correct=correct,
                           faults=SimpleNamespace(errors=0, timeouts=0))  # fmt: skip


def new_model():
    return build_model("tiny", 100, seed=0, hidden_size=32, intermediate_size=64,
                       num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                       initializer_range=0.3)  # fmt: skip


def run(engine, tokenizer, rule, examples, **split):
    return evaluate(engine, tokenizer, rule, examples, grade, num_samples=2, ks=(1, 2),
                    max_new_tokens=6, temperature=1.0, greedy=True, seed=5, batch_size=2,
                    bootstrap=20, **split)  # fmt: skip


class Counted:
    """An engine that counts its generate calls: each rank runs its share, not everything."""

    def __init__(self, engine):
        self.engine, self.calls = engine, 0

    def generate(self, prompts, **options):
        self.calls += 1
        return self.engine.generate(prompts, **options)


def main(out_dir: str) -> None:
    w = D.init_distributed(timeout_s=120)
    tokenizer = build_tokenizer()
    rule = TokenRule.from_tokenizer(tokenizer, None)
    examples = make_task("arithmetic").heldout(5)
    split = {"part": (w.rank, w.world_size), "gather": D.gather_objects}
    plain = new_model()
    counted = Counted(HFRolloutEngine(plain, rule.stop_ids, rule.pad_id))
    result = {"plain_split": run(counted, tokenizer, rule, examples, **split),
              "calls_per_rank": D.gather_objects(counted.calls)}  # fmt: skip
    root = S.shard_model(new_model())
    engine = S.GatheredEngine(root, HFRolloutEngine(root.model, rule.stop_ids, rule.pad_id))
    with engine.hold():
        result["sharded_split"] = run(engine, tokenizer, rule, examples, **split)
    if w.is_main:  # one process: no part, no collective
        result["plain_one"] = run(HFRolloutEngine(plain, rule.stop_ids, rule.pad_id), tokenizer,
                                  rule, examples)  # fmt: skip
        generic = HFRolloutEngine(plain, rule.stop_ids, rule.pad_id, fast_decode=False)
        result["generic_one"] = run(generic, tokenizer, rule, examples)
        (Path(out_dir) / "eval.json").write_text(json.dumps(result, indent=1))
    D.shutdown()


if __name__ == "__main__":
    main(*sys.argv[1:])
