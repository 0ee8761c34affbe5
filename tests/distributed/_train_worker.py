"""`drgrpo` CLI with two test seams: `python _train_worker.py train ...` (under torchrun for
several ranks) runs `drgrpo.app.cli.main` after patching

- the verifier to a dense reward (the share of digits in the completion): an untrained model
  never solves a task, and all-equal rewards would give no gradient;
- HFRolloutEngine's decode loop to scripted responses: row i's tokens are a function of its
  prompt and of i mod K (its place in its group) only, so every world size, sharding and
  micro-batching draws the very same rollouts, and weights can be compared across them. The
  sampler log-probs are still computed by the model's own forward with the engine's weights:
  under FSDP2 that forward fails unless the trainer gathered the full weights (shards are
  DTensors).
"""

from __future__ import annotations

import os
import sys

import torch

torch.set_num_threads(1)

from drgrpo.models import sequence_logprobs  # noqa: E402
from drgrpo.rollout import hf  # noqa: E402
from drgrpo.rollout.engine import pack_rollouts  # noqa: E402
from drgrpo.train import run as setup  # noqa: E402

GROUP = int(os.environ.get("DRGRPO_TEST_GROUP", "2"))
FIRST_TOKEN, VOCAB = 3, 100  # the char tokenizer: 0 pad, 1 bos, 2 eos


def scripted_decode(self, prompts, prompt_mask, max_new_tokens, temperature, top_p, generator):
    responses, finish = [], []
    for i in range(prompts.shape[0]):
        ids = prompts[i][prompt_mask[i]].tolist()
        key = sum((j + 1) * t for j, t in enumerate(ids)) * 31 + i % GROUP
        g = torch.Generator().manual_seed(key)
        length = int(torch.randint(1, max_new_tokens + 1, (), generator=g))
        tokens = torch.randint(FIRST_TOKEN, VOCAB, (length,), generator=g).tolist()
        stops = bool(torch.rand((), generator=g) < 0.7)
        if stops:
            tokens[-1] = self.stop_ids[0]
        responses.append(tokens)
        finish.append("stop" if stops else "length")
    prompt_lists = [prompts[i][prompt_mask[i]].tolist() for i in range(prompts.shape[0])]
    zeros = [[0.0] * len(r) for r in responses]
    out = pack_rollouts(prompt_lists, responses, zeros, finish, self.pad_token_id)
    out = out.to(prompts.device)
    logprobs, _ = sequence_logprobs(self.model, out.input_ids, out.attention_mask,
                                    out.response_start)  # fmt: skip
    return pack_rollouts(
        prompt_lists, responses,
        [row[: len(r)].tolist() for row, r in zip(logprobs.float(), responses, strict=True)],
        finish, self.pad_token_id,
    ).to(prompts.device)  # fmt: skip


def dense_task(real_make):
    def make(name, **options):
        task = real_make(name, **options)

        def verify(completion: str, reference: str) -> float:
            return sum(c.isdigit() for c in completion) / max(len(completion), 1)

        object.__setattr__(task, "verify", verify)
        return task

    return make


if __name__ == "__main__":
    hf.HFRolloutEngine._decode = scripted_decode
    setup.make_task = dense_task(setup.make_task)
    from drgrpo.app.cli import main

    sys.exit(main(sys.argv[1:]))
