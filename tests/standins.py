"""Locally made stand-ins for real Hugging Face models: nothing is downloaded.

`build_qwen_standin` is shaped like Qwen2.5 (the paper's base model family): Qwen2ForCausalLM
with tied embeddings and grouped-query attention, a byte-level BPE tokenizer trained here on
arithmetic text (no BOS, `<|endoftext|>` as pad, `<|im_start|>` / `<|im_end|>` special tokens,
`<|im_end|>` as the chat EOS), a short Qwen-style chat template, an embedding padded past the
tokenizer (Qwen2.5 has vocab_size 151936 for 151665 tokens) and
`generation_config.eos_token_id = [<|im_end|>, <|endoftext|>]`. `pad_equals_eos=True` is the
Qwen2.5-Math base variant: pad == eos == `<|endoftext|>`.

`build_family_standin(family, path)` saves a tiny model of another family for the generic path:
qwen3 (q/k norms), gemma, gemma2 (logit soft-capping, sliding window), gemma3, phi3 (fused
projections), phi (biased head, partial rotary), llama. Every builder returns the folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig, PreTrainedTokenizerFast

from drgrpo.models.tokenizer import build_tokenizer as build_char_tokenizer

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
BEGIN, EOT = "<|begin_of_text|>", "<|eot_id|>"  # Llama 3's BOS and end of turn
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, BEGIN, EOT)

# Qwen2.5's chat template, cut down: the same turn markup and default system message rule, no
# tools. The real one is in Qwen/Qwen2.5-*/tokenizer_config.json.
CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _corpus() -> list[str]:
    """Arithmetic and math-prompt text, enough for a few hundred BPE merges."""
    lines = [
        "Please reason step by step, and put your final answer within \\boxed{}.",
        "A conversation between User and Assistant. The User asks a question.",
        "<think> reasoning process here </think> <answer> answer here </answer>",
        "What is the sum of the first ten positive integers? The answer is 55.",
        "Solve for x: 2x + 3 = 11, so x = 4. Therefore the answer is \\boxed{4}.",
    ]
    for a in range(0, 40, 3):
        for b in range(1, 30, 7):
            lines.append(f"Question: what is {a} + {b}? Answer: {a} + {b} = {a + b}.")
            lines.append(f"Compute {a} * {b} - {b}. We get {a * b} - {b} = {a * b - b}.")
    return lines


@functools.cache
def _bpe_backend(vocab_size: int) -> str:
    """A byte-level BPE (Qwen's pre-tokenizer and decoder kind) as JSON; cached, trained once."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    return backend.to_str()


def build_qwen_tokenizer(*, pad_equals_eos: bool = False, vocab_size: int = 400):
    """The Qwen2.5-style tokenizer: no BOS, never an EOS appended, a chat template.

    eos = `<|im_end|>` and pad = `<|endoftext|>` (Qwen2.5 instruct), or with `pad_equals_eos`
    eos = pad = `<|endoftext|>` (Qwen2.5-Math base, the paper's model).
    """
    eos = ENDOFTEXT if pad_equals_eos else IM_END
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_bpe_backend(vocab_size)),
        eos_token=eos,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


# Llama 3's chat template, cut down: like most chat templates (Llama, Gemma, Mistral, Phi-3) it
# writes the BOS itself, while the tokenizer also adds one to every encoded text.
LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content']"
    " + '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{%- endif %}"
)


def build_llama3_tokenizer():
    """A Llama-3-style tokenizer on the same BPE: `<|begin_of_text|>` added before every text
    (a post-processor), eos `<|eot_id|>`, and a chat template that writes the BOS too."""
    backend = Tokenizer.from_str(_bpe_backend(400))
    backend.add_special_tokens(["<|start_header_id|>", "<|end_header_id|>"])
    bos = backend.token_to_id(BEGIN)
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BEGIN} $A", pair=f"{BEGIN} $A $B", special_tokens=[(BEGIN, bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BEGIN,
        eos_token=EOT,
        pad_token=ENDOFTEXT,
        chat_template=LLAMA3_CHAT_TEMPLATE,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )


def build_qwen_standin(
    path,
    *,
    pad_equals_eos: bool = False,
    stop_tokens: tuple[str, ...] | None = (IM_END, ENDOFTEXT),
    hidden_size: int = 64,
    seed: int = 0,
) -> Path:
    """Save a Qwen2.5-shaped causal LM and its tokenizer to `path`; return the folder.

    `stop_tokens`: the generation_config's eos_token_id list (None: no generation_config eos,
    so the tokenizer's EOS is the only stop).
    """
    tokenizer = build_qwen_tokenizer(pad_equals_eos=pad_equals_eos)
    config = AutoConfig.for_model(
        "qwen2",
        vocab_size=_padded(len(tokenizer)),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,  # peaked distributions: greedy argmaxes far from ties
    )
    stops = (
        None if stop_tokens is None else [tokenizer.convert_tokens_to_ids(t) for t in stop_tokens]
    )
    return _save(config, tokenizer, path, stops, seed)


FAMILIES = ("qwen3", "gemma", "gemma2", "gemma3_text", "phi3", "phi", "llama")
"""`build_family_standin` families (HF model_type names)."""

_SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
_FAMILY_OPTIONS = {
    "qwen3": dict(num_key_value_heads=2, head_dim=16, tie_word_embeddings=True),
    "gemma": dict(num_key_value_heads=2, head_dim=16),
    # Soft-capped logits and attention, alternating sliding-window layers (window 8 < the test
    # sequences, so it binds).
    "gemma2": dict(num_key_value_heads=2, head_dim=16, sliding_window=8, query_pre_attn_scalar=16),
    "gemma3_text": dict(
        num_key_value_heads=2, head_dim=16, sliding_window=8, query_pre_attn_scalar=16
    ),  # fmt: skip
    "phi3": dict(num_key_value_heads=2, tie_word_embeddings=False),
    "phi": dict(num_key_value_heads=4, tie_word_embeddings=False),
    "llama": dict(num_key_value_heads=2, tie_word_embeddings=False),
}
_QWEN_TOKENIZER = ("qwen3",)
"""Families saved with the Qwen-style BPE tokenizer (the rest get the char tokenizer, BOS on)."""


def build_family_standin(family: str, path, *, seed: int = 0) -> Path:
    """Save a tiny `family` causal LM (see FAMILIES) with a local tokenizer; return the folder."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}: use one of {FAMILIES}")
    tokenizer = build_qwen_tokenizer() if family in _QWEN_TOKENIZER else build_char_tokenizer()
    config = AutoConfig.for_model(
        family,
        vocab_size=_padded(len(tokenizer)),
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        initializer_range=0.2,
        **_SHAPE,
        **_FAMILY_OPTIONS[family],
    )
    stops = None
    if family in _QWEN_TOKENIZER:
        stops = [tokenizer.convert_tokens_to_ids(t) for t in (IM_END, ENDOFTEXT)]
    return _save(config, tokenizer, path, stops, seed)


def _save(config, tokenizer, path, stop_ids, seed) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    generation = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=stop_ids if stop_ids is not None else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.generation_config = generation
    _make_stops_likely(model, stop_ids or [tokenizer.eos_token_id], config.initializer_range)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@torch.no_grad()
def _make_stops_likely(model, stop_ids, std, scale=2.0):
    """A random model all but never samples one given token; a trained one ends its answers.
    Each stop id's output row is drawn afresh if it is zero (the embedding's padding_idx row, tied
    to the head when pad is a stop id) and scaled by `scale`, so that greedy rows stop on either
    id of the stop set within a few tokens, and some run out (the tests check they do)."""
    head = model.get_output_embeddings().weight  # (V, H)
    for i in stop_ids:
        if not head[i].any():
            head[i].normal_(0.0, std)
        head[i] *= scale


def _padded(n: int, multiple: int = 64) -> int:
    """The embedding size real checkpoints use: the tokenizer's size rounded up (Qwen2.5: 151665
    tokens, 151936 rows), so the model can put mass on ids no tokenizer decodes."""
    return -(-n // multiple) * multiple
