"""The models, tokenizer and workloads of benchmarks/gpu_check.py, all built locally (nothing is
downloaded): random-init Qwen2.5-shaped models with the real dimensions, a word-level tokenizer
over a vocabulary of the same size, and seeded prompts and training batches.

Dimensions: the `config.json` of Qwen/Qwen2.5-0.5B and Qwen/Qwen2.5-1.5B on the Hugging Face Hub
(their model cards agree: 0.49B and 1.54B parameters, 24 / 28 layers, GQA 14 / 12 query heads
over 2 key-value heads, tied word embeddings, QKV bias). Qwen2Config's defaults supply the rest
as those files have it (silu MLP, attention bias on q/k/v, no sliding window).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
FIRST_WORD_ID = 4  # ids below are the special tokens above

_QWEN25 = dict(vocab_size=151936, tie_word_embeddings=True, rope_theta=1_000_000.0,
               rms_norm_eps=1e-6, max_position_embeddings=32768, hidden_act="silu")  # fmt: skip
SIZES: dict[str, dict] = {
    "qwen2.5-0.5b": dict(hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, intermediate_size=4864, **_QWEN25),
    "qwen2.5-1.5b": dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, intermediate_size=8960, **_QWEN25),
    # The same architecture (GQA, QKV bias, tied head) at a size a loaded CPU runs in seconds.
    # head_dim 32: vLLM's CPU attention has no kernel for 16.
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=256, vocab_size=512,
                 tie_word_embeddings=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                 max_position_embeddings=512),
}  # fmt: skip


@dataclass(frozen=True)
class Workload:
    """What each item runs on. Rows = prompts x k (groups of k samples of one prompt)."""

    prompts: int
    k: int
    prompt_len: int  # tokens per prompt, BOS included
    new_tokens: int  # sampled tokens per row (generation runs every row to this length)
    micro_batch: int  # rows per forward/backward in the optimizer step (0: all rows at once)
    repeats: int  # timed calls after the warm-up, for generation and the optimizer step

    @property
    def rows(self) -> int:
        return self.prompts * self.k


WORKLOADS = {
    # 64 rows x 256 new tokens: a typical RL rollout batch on one GPU.
    "gpu": Workload(prompts=8, k=8, prompt_len=64, new_tokens=256, micro_batch=16, repeats=2),
    "tiny": Workload(prompts=2, k=4, prompt_len=8, new_tokens=16, micro_batch=4, repeats=2),
}


def build_config(size: str):
    from transformers import Qwen2Config

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; choose from {', '.join(SIZES)}")
    return Qwen2Config(**SIZES[size], pad_token_id=PAD_ID, bos_token_id=BOS_ID,
                       eos_token_id=EOS_ID)  # fmt: skip


def build_model(size: str, device: torch.device, seed: int = 0) -> torch.nn.Module:
    """A random-init float32 Qwen2ForCausalLM of `size`, created on `device` (so a 1.5B model
    is initialised by the GPU, not by the host); the same seed gives the same weights."""
    from transformers import Qwen2ForCausalLM

    config = build_config(size)
    torch.manual_seed(seed)
    with torch.device(device):
        model = Qwen2ForCausalLM(config)
    return model.float()


def build_tokenizer(vocab_size: int):
    """A word-level tokenizer over `vocab_size` ids: <pad> <bos> <eos> <unk>, then "w4" ..
    "w{V-1}", split on whitespace, so every model id has a token and text round-trips."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<bos>", "<eos>", "<unk>"]
    vocab = {t: i for i, t in enumerate(specials)}
    vocab.update({f"w{i}": i for i in range(FIRST_WORD_ID, vocab_size)})
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(specials)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                   bos_token="<bos>", eos_token="<eos>", unk_token="<unk>",
                                   padding_side="left")  # fmt: skip


def prompt_ids(tokenizer, work: Workload, seed: int) -> list[list[int]]:
    """`work.prompts` random prompts, BOS first, each repeated k times in a row (a group),
    encoded from text by `tokenizer` (and checked: the ids are the words drawn)."""
    vocab = len(tokenizer)
    g = torch.Generator().manual_seed(seed)
    words = torch.randint(FIRST_WORD_ID, vocab, (work.prompts, work.prompt_len - 1), generator=g)
    rows = []
    for drawn in words.tolist():
        ids = tokenizer.encode(" ".join(f"w{i}" for i in drawn), add_special_tokens=False)
        if ids != drawn:
            raise RuntimeError("the local tokenizer does not round-trip its own words")
        rows.extend([[BOS_ID] + ids] * work.k)
    return rows


def step_batch(config, work: Workload, device: torch.device, seed: int):
    """A TrainBatch of full-length rows for the optimizer step: random prompt tokens shared by
    each group of k rows, random responses of exactly `new_tokens`, 0/1 rewards turned into
    Dr.GRPO advantages (group mean baseline, no std scaling)."""
    from drgrpo.objective import compute_advantages, resolve_objective
    from drgrpo.train.update import TrainBatch

    spec = resolve_objective("dr_grpo")
    g = torch.Generator().manual_seed(seed)
    n, p, t, v = work.rows, work.prompt_len, work.new_tokens, config.vocab_size
    prompts = torch.randint(FIRST_WORD_ID, v, (work.prompts, p), generator=g)
    prompts[:, 0] = BOS_ID
    responses = torch.randint(FIRST_WORD_ID, v, (n, t), generator=g)
    input_ids = torch.cat([prompts.repeat_interleave(work.k, dim=0), responses], dim=1)
    rewards = torch.randint(0, 2, (n,), generator=g).float()
    advantages = compute_advantages(rewards, work.k, baseline=spec.baseline, scale=spec.scale)
    return spec, TrainBatch(
        input_ids=input_ids.to(device),  # (N, P+T)
        attention_mask=torch.ones_like(input_ids, dtype=torch.bool).to(device),
        response_start=p,
        loss_mask=torch.ones((n, t), dtype=torch.bool, device=device),  # (N, T)
        advantages=advantages.to(device),  # (N,)
    )
