"""A start-up estimate of a run's device memory, from the model's config and the run's shape.

Pure arithmetic (no weights are loaded), so a run can say what will not fit before it fails:

    weights        P x bytes(param dtype)
    gradients      P_trainable x bytes(param dtype)          (freed between updates)
    optimizer      AdamW exp_avg + exp_avg_sq: 2 x 4 x P_trainable (fp32 state)
    master         4 x P_trainable when the parameters are not fp32 (the fp32 copy that the
                   updates land in; bf16 parameters round a 1e-6 step away)
    reference      P x bytes(param dtype) when a frozen reference model is kept (KL)
    kv cache       L x 2 (k, v) x rows x kv_heads x (prompt + max_new_tokens) x head_dim x bytes
                   rows = the rows generated in one call (the rollout chunk, or all N); the
                   shape of the fast path's preallocated buffer (`LlamaStepper.kv`)
    rollout logits 3 x rows x V x 4: logits, log-softmax and probabilities of one decode step
    activations    per layer and token, the tensors a Llama/Qwen2 block keeps for backward:
                   4H (two norms' inputs and outputs) + 2(q + kv) (q, k, v, attention output)
                   + 4I (gate, up, act(gate), their product) elements of the compute dtype;
                   x layers, or under gradient checkpointing H per layer (each layer's input)
                   + one layer's full set (recomputed in backward). A lower bound: what
                   autograd saves measured 1.08-1.14x of it in fp32, 1.16-1.26x in bf16 (the
                   norms' fp32 upcasts; tests/models/test_memory.py)
    logits block   the chunked head (`drgrpo.models.logprobs`): 3 blocks of
                   min(chunk rows, response tokens) x min(V, tile) fp32 logits

A step's peak is the persistent part (weights, optimizer, master, reference) plus the larger of
the rollout phase (kv cache, rollout logits) and the training phase (gradients, activations,
logits block): generation and backward do not overlap.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from drgrpo.models.logprobs import CHUNK_BYTES, MIN_TILE

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
_LLAMA_LIKE = ("llama", "qwen2", "qwen3", "mistral")
"""Model types whose parameter count `count_parameters` derives by hand; others are counted
on a meta-device instance of the config (exact, and allocates nothing)."""
GiB = 2**30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes of each part of a step's memory (see the module docstring for each formula)."""

    weights: int
    gradients: int
    optimizer: int
    master: int
    reference: int
    kv_cache: int
    rollout_logits: int
    activations: int
    logits_block: int
    num_params: int
    """Parameters counted from the config (not bytes)."""

    @property
    def persistent(self) -> int:
        return self.weights + self.optimizer + self.master + self.reference

    @property
    def rollout_phase(self) -> int:
        return self.kv_cache + self.rollout_logits

    @property
    def training_phase(self) -> int:
        return self.gradients + self.activations + self.logits_block

    @property
    def total(self) -> int:
        """The step's estimated peak: persistent + max(rollout phase, training phase)."""
        return self.persistent + max(self.rollout_phase, self.training_phase)

    def format_estimate(self, capacity: int | None = None) -> str:
        """A short table in GiB; with `capacity` (bytes of the device), a line saying whether
        the estimate fits."""
        parts = [f.name for f in fields(self) if f.name != "num_params"]
        lines = [f"memory estimate ({self.num_params / 1e9:.3f}B parameters)"]
        lines += [f"  {name:<15} {getattr(self, name) / GiB:9.2f} GiB" for name in parts]
        lines.append(f"  {'peak':<15} {self.total / GiB:9.2f} GiB  = persistent "
                     f"{self.persistent / GiB:.2f} + max(rollout {self.rollout_phase / GiB:.2f}, "
                     f"training {self.training_phase / GiB:.2f})")  # fmt: skip
        if capacity is not None:
            verdict = "fits" if self.total <= capacity else "does NOT fit"
            lines.append(f"  {verdict} in {capacity / GiB:.2f} GiB")
        return "\n".join(lines)


def estimate_memory(
    config,
    *,
    rollout_rows: int,
    prompt_tokens: int,
    max_new_tokens: int,
    micro_batch_rows: int,
    param_dtype: str = "float32",
    compute_dtype: str | None = None,
    reference_model: bool = False,
    gradient_checkpointing: bool = False,
    trainable_params: int | None = None,
    logprob_chunk_rows: int = 1024,
) -> MemoryEstimate:
    """The estimate for a HF causal-LM `config` and a run's shape.

    `rollout_rows`: rows generated in one call (the rollout chunk size, or prompts x samples);
    `prompt_tokens`: the longest prompt; `micro_batch_rows`: rows per forward/backward;
    `compute_dtype`: of activations and the KV cache (default `param_dtype`; "bfloat16" for fp32
    weights under CUDA autocast); `trainable_params`: default all (fewer under LoRA);
    `logprob_chunk_rows`: `sequence_logprobs`' chunk_size.
    """
    for name, value in (("rollout_rows", rollout_rows), ("prompt_tokens", prompt_tokens),
                        ("max_new_tokens", max_new_tokens), ("micro_batch_rows", micro_batch_rows),
                        ("logprob_chunk_rows", logprob_chunk_rows)):  # fmt: skip
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    param_bytes = _bytes(param_dtype)
    act_bytes = _bytes(compute_dtype or param_dtype)
    p = count_parameters(config)
    trainable = p if trainable_params is None else trainable_params
    dims = _dims(config)
    seq = prompt_tokens + max_new_tokens
    return MemoryEstimate(
        weights=p * param_bytes,
        gradients=trainable * param_bytes,
        optimizer=2 * 4 * trainable,
        master=4 * trainable if param_bytes != 4 else 0,
        reference=p * param_bytes if reference_model else 0,
        kv_cache=kv_cache_bytes(config, rollout_rows, seq, act_bytes),
        rollout_logits=3 * rollout_rows * dims["vocab"] * 4,
        activations=activation_bytes(
            config, micro_batch_rows * seq, act_bytes, gradient_checkpointing
        ),  # fmt: skip
        logits_block=3
        * _logits_block(
            micro_batch_rows * max_new_tokens, dims["vocab"], logprob_chunk_rows
        ),  # fmt: skip
        num_params=p,
    )


def kv_cache_bytes(config, rows: int, positions: int, dtype_bytes: int) -> int:
    """layers x 2 (k and v) x rows x kv_heads x positions x head_dim x bytes."""
    d = _dims(config)
    return d["layers"] * 2 * rows * d["kv_heads"] * positions * d["head_dim"] * dtype_bytes


def activation_bytes(config, tokens: int, dtype_bytes: int, checkpointing: bool) -> int:
    """What one forward over `tokens` keeps for backward (module docstring)."""
    d = _dims(config)
    per_layer = 4 * d["hidden"] + 2 * (d["q_dim"] + d["kv_dim"]) + 4 * d["intermediate"]
    # Checkpointed: each layer's input, plus the one layer being recomputed in backward.
    elements = d["layers"] * (d["hidden"] if checkpointing else per_layer)
    elements += per_layer if checkpointing else 0
    return elements * tokens * dtype_bytes


def count_parameters(config) -> int:
    """Parameters of the model `config` describes (a tied head counted once)."""
    if getattr(config, "model_type", None) not in _LLAMA_LIKE:
        return _count_on_meta(config)
    d = _dims(config)
    h, i = d["hidden"], d["intermediate"]
    qkv_bias = config.model_type == "qwen2" or getattr(config, "attention_bias", False)
    attention = h * d["q_dim"] + 2 * h * d["kv_dim"] + d["q_dim"] * h
    if qkv_bias:
        attention += d["q_dim"] + 2 * d["kv_dim"]
    if config.model_type != "qwen2" and getattr(config, "attention_bias", False):
        attention += h  # o_proj's bias (Qwen2 biases q, k, v only, whatever the config says)
    mlp = 3 * h * i + (2 * i + h if getattr(config, "mlp_bias", False) else 0)
    norms = 2 * h + (2 * d["head_dim"] if config.model_type == "qwen3" else 0)  # q/k norms
    embedding = d["vocab"] * h
    head = 0 if config.tie_word_embeddings else d["vocab"] * h
    return embedding + d["layers"] * (attention + mlp + norms) + h + head


def _count_on_meta(config) -> int:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def _dims(config) -> dict[str, int]:
    config = getattr(config, "text_config", None) or config  # multimodal wrappers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    return {
        "vocab": config.vocab_size,
        "hidden": config.hidden_size,
        "intermediate": config.intermediate_size,
        "layers": config.num_hidden_layers,
        "head_dim": head_dim,
        "kv_heads": kv_heads,
        "q_dim": heads * head_dim,
        "kv_dim": kv_heads * head_dim,
    }


def _logits_block(response_tokens: int, vocab: int, chunk_rows: int) -> int:
    """Bytes of one fp32 logits block of the chunked head (`_HeadStats` and `_vocab_tile`)."""
    rows = min(chunk_rows, response_tokens)
    tile = vocab if rows * vocab * 4 <= CHUNK_BYTES else max(MIN_TILE, CHUNK_BYTES // (4 * rows))
    return rows * min(vocab, tile) * 4


def _bytes(dtype: str) -> int:
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"unknown dtype {dtype!r}: use one of {sorted(DTYPE_BYTES)}")
    return DTYPE_BYTES[dtype]
