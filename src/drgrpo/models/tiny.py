"""Small Llama-shaped policies built from scratch, and loading/saving policies from local folders."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from drgrpo.models.tokenizer import BOS_ID, EOS_ID, PAD_ID

MODEL_SIZES: dict[str, dict] = {
    # ~1.06M parameters with the 100-token character vocabulary: trains on a laptop CPU.
    "tiny": dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=512,
    ),
    # ~10.5M parameters: the largest that still does a few RL steps a minute on 2 CPU cores.
    "small": dict(
        hidden_size=256,
        num_hidden_layers=10,
        num_attention_heads=8,
        intermediate_size=1024,
        max_position_embeddings=512,
    ),
    # Qwen2.5's vocabulary width on a thin body (~41M parameters, 39M of them the tied
    # embedding): the benchmarks use it to make the lm_head/log-softmax cost realistic.
    # Its vocab_size is a floor: ids the tokenizer never produces are simply extra rows.
    "wide-vocab": dict(
        hidden_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=1024,
        max_position_embeddings=2048,
        vocab_size=151936,
    ),
}


def build_model(size: str, vocab_size: int, seed: int = 0, **overrides) -> LlamaForCausalLM:
    """A freshly initialised LlamaForCausalLM of a named size; the same seed gives the same weights.

    `overrides` are LlamaConfig fields (e.g. `num_hidden_layers=2`) applied last. The special ids
    are `build_tokenizer`'s (pad=0, bos=1, eos=2), so pad is never eos.
    """
    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; valid sizes: {', '.join(MODEL_SIZES)}")
    fields = dict(MODEL_SIZES[size])
    fields["vocab_size"] = max(vocab_size, fields.get("vocab_size", 0))
    fields.update(
        tie_word_embeddings=True,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
    )
    fields.update(overrides)
    config = LlamaConfig(**fields)
    # fork_rng keeps the caller's global RNG stream untouched by model construction.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LlamaForCausalLM(config)


def load_policy(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | str | None = None
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """(model, tokenizer) from a local Hugging Face folder; never touches the network.

    `dtype=None` keeps the dtype the checkpoint was saved in.
    """
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"policy folder {str(path)!r} does not exist")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r} has no config.json: not a saved Hugging Face model folder "
            "(save one with drgrpo.models.save_policy)"
        )
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    return model.to(device), tokenizer


def save_policy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, path: str | Path
) -> None:
    """Write model (safetensors) and tokenizer into one folder that `load_policy` reads back."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    if not any(path.glob("*.safetensors")):
        raise RuntimeError(f"save_pretrained wrote no .safetensors file into {str(path)!r}")
