"""Batched sampling from a Hugging Face causal LM with our own KV-cached decode loop.

Not `model.generate`: one loop we control keeps the sampler's log-probs exactly those that
`sequence_logprobs` recomputes (same positions, same fp32 log-softmax), and skips generate's
per-step processor machinery. Where the time goes, and what the loop does about it (measured on
2 CPU cores, benchmarks/README.md):

- the prompt is prefilled by the model's own forward; each decode step of a Llama-shaped model
  (Llama, Qwen2) then runs on a preallocated KV cache (`_LlamaStepper`): HF's DynamicCache
  concatenates the whole cache anew at every step, a cost that grows with the position;
- rows that sampled EOS leave the batch at once (their cache slots are refilled by running
  rows), so a step costs what the running rows need, not what the longest row needs;
- q|k|v and gate|up are one matmul each, and cos/sin of every position are computed once;
- one categorical draw per row by inverse CDF instead of `torch.multinomial`, which on CPU
  draws V exponential variates per row (most of a step's time at V=151936).
Any other model steps through its own forward (`_HFStepper`), finished rows kept and masked.
"""

from __future__ import annotations

import dataclasses

import torch
from transformers.cache_utils import DynamicCache

from drgrpo.models.logprobs import (
    cache_kwarg,
    layer_keys_values,
    position_ids_from_mask,
    shared_prompts,
)
from drgrpo.models.wrappers import reads_raw_weights
from drgrpo.rollout.engine import Rollouts, left_pad


class HFRolloutEngine:
    """`RolloutEngine` over an in-process HF model; it samples from the very weights being trained."""

    def __init__(
        self,
        model: torch.nn.Module,
        eos_token_id: int,
        pad_token_id: int,
        *,
        fast_decode: bool = True,
    ):
        """`fast_decode`: use the preallocated-cache decode step for Llama-shaped models (Llama,
        Qwen2) and drop finished rows; False (or any other model) steps through the model's own
        forward with a DynamicCache. Both sample the same distribution."""
        if eos_token_id == pad_token_id:
            # Masking pad would then also mask every real stop token.
            raise ValueError(f"pad_token_id must differ from eos_token_id (both {eos_token_id})")
        self.model = model
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self.fast_decode = fast_decode

    def sync_weights(self, model: torch.nn.Module) -> None:
        self.model = model  # same process, same tensors: nothing to copy

    def generate(
        self,
        prompt_ids: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Rollouts:
        """One response per prompt; see `RolloutEngine.generate`.

        The pad id is never sampled (it would be indistinguishable from padding); like top-p,
        this truncates the sampling distribution but not `sampler_logprobs`.
        """
        if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
            raise ValueError("need at least one prompt, each with at least one token (BOS)")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}"
            )
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        limit = getattr(self.model.config, "max_position_embeddings", None)
        longest = max(len(p) for p in prompt_ids) + max_new_tokens
        if limit is not None and longest > limit:
            raise ValueError(
                f"prompt + max_new_tokens = {longest} > max_position_embeddings {limit}"
            )

        device = next(self.model.parameters()).device
        if generator is None:
            generator = torch.Generator(device)
            # Without a seed, draw one from the global RNG so torch.manual_seed still governs it.
            generator.manual_seed(seed if seed is not None else int(torch.randint(2**62, ())))
        prompts, prompt_mask = left_pad(prompt_ids, self.pad_token_id, device)

        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                rollouts = self._decode(
                    prompts, prompt_mask, max_new_tokens, temperature, top_p, generator
                )
        finally:
            self.model.train(was_training)
        # Inference-mode tensors may not enter autograd-tracked maths (the trainer's ratio and
        # masking), so hand back ordinary copies; at N x (P+T) they are cheap.
        return dataclasses.replace(
            rollouts,
            **{
                f.name: getattr(rollouts, f.name).clone()
                for f in dataclasses.fields(rollouts)
                if isinstance(getattr(rollouts, f.name), torch.Tensor)
            },
        )

    def _decode(
        self, prompts, prompt_mask, max_new_tokens, temperature, top_p, generator
    ) -> Rollouts:
        n, p = prompts.shape
        device = prompts.device
        decoder = self.model.get_decoder()
        head = self.model.get_output_embeddings()
        cache = DynamicCache(config=self.model.config)
        first_position = prompt_mask.sum(dim=1)  # (n,) position of each row's first response token
        fast = self.fast_decode and _LlamaStepper.supports(self.model)
        # A group's K rows share one prompt: the fast path prefills each distinct prompt once.
        shared = shared_prompts(prompts, prompt_mask, p) if fast else None
        unique_ids, unique_mask, which = shared or (prompts, prompt_mask, None)
        hidden = decoder(
            input_ids=unique_ids,
            attention_mask=unique_mask.long(),
            position_ids=position_ids_from_mask(unique_mask),
            use_cache=True,
            **{cache_kwarg(decoder): cache},
        ).last_hidden_state[:, -1]
        if fast:
            hidden = hidden if which is None else hidden[which]
            stepper = _LlamaStepper(
                decoder, cache, prompt_mask, first_position, max_new_tokens, which
            )
        else:
            stepper = _HFStepper(decoder, cache, prompt_mask, first_position, max_new_tokens)
        del cache  # the stepper owns the prompt's keys and values now

        if (
            fast
            and type(head) is torch.nn.Linear
            and reads_raw_weights(head)
            and _transpose_pays(head, max_new_tokens)
        ):
            head = _TransposedHead(head)
        response = torch.full(
            (n, max_new_tokens), self.pad_token_id, dtype=torch.long, device=device
        )
        logprobs = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=device)
        response_mask = torch.zeros((n, max_new_tokens), dtype=torch.bool, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        # Original row ids of the rows the stepper still computes, in its order. A stepper that can
        # drop rows (`_LlamaStepper`) only holds running rows; the generic one keeps finished rows
        # (fed the pad token, masked out) until every row has finished.
        rows = torch.arange(n, device=device)
        for step in range(max_new_tokens):
            token, logprob = self._sample(head(hidden), temperature, top_p, generator)
            # A row's token counts iff the row was still running when it was sampled (so EOS does).
            live = ~done[rows]
            token = token.masked_fill_(~live, self.pad_token_id)
            response[rows, step] = token
            logprobs[rows, step] = logprob.masked_fill_(~live, 0.0).to(logprobs.dtype)
            response_mask[rows, step] = live
            finished = live & (token == self.eos_token_id)
            done[rows[finished]] = True
            if step + 1 == max_new_tokens or bool(done.all()):
                break
            if stepper.can_drop_rows and bool(finished.any()):
                order = stepper.drop(finished, step)
                rows, token, live = rows[order], token[order], live[order]
            hidden = stepper.step(token, live, step)

        steps = step + 1
        return Rollouts(
            prompt_ids=prompts,
            prompt_mask=prompt_mask,
            response_ids=response[:, :steps],
            response_mask=response_mask[:, :steps],
            sampler_logprobs=logprobs[:, :steps],
            finish_reason=["stop" if d else "length" for d in done.tolist()],
        )

    def _sample(self, logits, temperature, top_p, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(token, log-prob of token under softmax(logits / temperature)) per row.

        Overwrites `logits` when it is already fp32: the engine passes a fresh head output.
        """
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        scaled = logits if temperature in (0, 1) else logits / temperature
        logprobs = torch.log_softmax(scaled, dim=-1)
        if temperature == 0:
            logits[:, self.pad_token_id] = -torch.inf
            token = logits.argmax(dim=-1)
        else:
            probs = logprobs.exp()
            probs[:, self.pad_token_id] = 0.0
            if top_p < 1:
                probs = _nucleus(probs, top_p)
            token = _categorical(probs, generator)
        return token, logprobs.gather(-1, token[:, None]).squeeze(-1)


class _HFStepper:
    """One decode step through the model's own forward and a DynamicCache (any HF causal LM).

    Finished rows stay in the batch (fed the pad token, masked out of attention).
    """

    can_drop_rows = False

    def __init__(self, decoder, cache, prompt_mask, first_position, max_new_tokens):
        n, p = prompt_mask.shape
        self.decoder, self.cache, self.p = decoder, cache, p
        self.cache_kwarg = cache_kwarg(decoder)
        self.first_position = first_position[:, None]
        # One buffer for the whole run; each step attends to a growing prefix of it.
        self.mask = torch.zeros(
            (n, p + max_new_tokens), dtype=torch.long, device=prompt_mask.device
        )
        self.mask[:, :p] = prompt_mask

    def step(self, token, live, step):
        """Hidden state after feeding `token` (sampled at `step`) for every row: (n, h)."""
        self.mask[:, self.p + step] = live
        return self.decoder(
            input_ids=token[:, None],
            attention_mask=self.mask[:, : self.p + step + 1],
            position_ids=self.first_position + step,
            use_cache=True,
            **{self.cache_kwarg: self.cache},
        ).last_hidden_state[:, -1]


class _LlamaStepper:
    """Decode steps for Llama-shaped decoders (Llama, Qwen2) on a preallocated KV cache.

    Calls the model's own modules (norms, projections, rotary embedding, MLP), so the numbers are
    the model's; what it replaces is the per-step machinery around them: the mask building and
    the cache that is concatenated anew at every step (quadratic copying in the response length).
    Rows that finished are dropped by swapping the last running rows into their slots, so the
    running rows are always a prefix of the cache and a step costs only what they need.
    """

    can_drop_rows = True

    @staticmethod
    def supports(model) -> bool:
        if not reads_raw_weights(model):  # peft / sharded / DDP: its .weight is not the weight
            return False
        config = model.config
        if getattr(config, "model_type", None) not in ("llama", "qwen2"):
            return False
        if getattr(config, "use_sliding_window", False) or any(
            t != "full_attention" for t in (getattr(config, "layer_types", None) or ())
        ):
            return False
        decoder = model.get_decoder()
        needed = ("embed_tokens", "layers", "norm", "rotary_emb")
        if not all(hasattr(decoder, name) for name in needed):
            return False
        return all(
            hasattr(layer, "self_attn") and hasattr(layer, "mlp")
            and all(hasattr(layer.self_attn, f"{x}_proj") for x in "qkvo")
            and not hasattr(layer.self_attn, "q_norm")
            for layer in decoder.layers
        )  # fmt: skip

    def __init__(self, decoder, cache, prompt_mask, first_position, max_new_tokens, which=None):
        """`which[row]`: the cache row holding that row's prompt (None: row i is cache row i)."""
        import sys

        n, p = prompt_mask.shape
        self.decoder, self.p = decoder, p
        self.layers = list(decoder.layers)
        attn = self.layers[0].self_attn
        self.head_dim, self.scaling = attn.head_dim, attn.scaling
        self.rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb
        keys0, _ = layer_keys_values(cache, 0)
        kv_heads = keys0.shape[1]
        self.gqa = attn.q_proj.out_features // self.head_dim != kv_heads
        # (layer, key/value, row, kv head, column, head dim); columns: prompt, then responses.
        self.kv = torch.empty(
            (len(self.layers), 2, n, kv_heads, p + max_new_tokens, self.head_dim),
            dtype=keys0.dtype, device=keys0.device,
        )  # fmt: skip
        for i in range(len(self.layers)):
            keys, values = layer_keys_values(cache, i)
            self.kv[i, 0, :, :, :p] = keys if which is None else keys[which]
            self.kv[i, 1, :, :, :p] = values if which is None else values[which]
        self.mask = torch.zeros(
            (n, p + max_new_tokens), dtype=torch.bool, device=prompt_mask.device
        )
        self.mask[:, :p] = prompt_mask
        self.first_position = first_position.clone()
        self.rows = n  # running rows: the first `rows` of every buffer
        # Fewer, larger matmuls per step: q|k|v and gate|up as one weight each (copied once per
        # rollout, so they are the weights being trained).
        self.qkv = [_fused(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)
                    for layer in self.layers]  # fmt: skip
        self.split = (attn.q_proj.out_features, attn.k_proj.out_features, attn.v_proj.out_features)
        mlp = self.layers[0].mlp
        self.gated = all(hasattr(mlp, a) for a in ("gate_proj", "up_proj", "down_proj", "act_fn"))
        self.gate_up = [_fused(layer.mlp.gate_proj, layer.mlp.up_proj) if self.gated else None
                        for layer in self.layers]  # fmt: skip
        # cos/sin of every position this rollout can reach, computed once.
        positions = torch.arange(p + max_new_tokens, device=prompt_mask.device)[None]
        probe = self.decoder.embed_tokens.weight[:1][None]
        cos, sin = self.decoder.rotary_emb(probe, positions)
        self.cos, self.sin = cos[0], sin[0]  # (positions, head_dim)

    def drop(self, finished, step) -> torch.Tensor:
        """Forget the rows where `finished` (over the running rows); returns the new row order."""
        m = self.rows
        keep = ~finished
        kept = int(keep.sum())
        holes = (~keep[:kept]).nonzero().squeeze(1)  # slots inside the new prefix to refill
        movers = keep[kept:].nonzero().squeeze(1) + kept  # running rows beyond it
        order = torch.arange(m, device=finished.device)
        if len(holes):
            width = self.p + step + 1  # columns written so far (the new token's is still empty)
            self.kv[:, :, holes, :, :width] = self.kv[:, :, movers, :, :width]
            self.mask[holes] = self.mask[movers]
            self.first_position[holes] = self.first_position[movers]
            order[holes] = movers
        self.rows = kept
        return order[:kept]

    def step(self, token, live, step):
        """Hidden state after feeding `token` (sampled at `step`) for the running rows: (m, h)."""
        m, col = self.rows, self.p + step
        linear = torch.nn.functional.linear
        x = self.decoder.embed_tokens(token[:, None])  # (m, 1, h)
        position = self.first_position[:m] + step
        cos, sin = self.cos[position][:, None], self.sin[position][:, None]  # (m, 1, head_dim)
        self.mask[:m, col] = True
        mask = self.mask[:m, None, None, : col + 1]
        nq, nk, nv = self.split
        for i, layer in enumerate(self.layers):
            attn = layer.self_attn
            qkv = linear(layer.input_layernorm(x), *self.qkv[i])
            q = qkv[..., :nq].view(m, 1, -1, self.head_dim).transpose(1, 2)
            k = qkv[..., nq : nq + nk].view(m, 1, -1, self.head_dim).transpose(1, 2)
            v = qkv[..., nq + nk :].view(m, 1, -1, self.head_dim).transpose(1, 2)
            q, k = self.rope(q, k, cos, sin)
            keys, values = self.kv[i, 0, :m], self.kv[i, 1, :m]
            keys[:, :, col] = k[:, :, 0]
            values[:, :, col] = v[:, :, 0]
            o = torch.nn.functional.scaled_dot_product_attention(
                q, keys[:, :, : col + 1], values[:, :, : col + 1], attn_mask=mask,
                scale=self.scaling, enable_gqa=self.gqa,
            )  # fmt: skip
            x = x + attn.o_proj(o.transpose(1, 2).reshape(m, 1, -1))
            h = layer.post_attention_layernorm(x)
            if self.gated:
                gate, up = linear(h, *self.gate_up[i]).chunk(2, dim=-1)
                x = x + layer.mlp.down_proj(layer.mlp.act_fn(gate) * up)
            else:
                x = x + layer.mlp(h)
        return self.decoder.norm(x)[:, 0]


def _fused(*linears) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias) of several Linear layers on the same input, stacked on the output axis."""
    weight = torch.cat([lin.weight for lin in linears])
    if all(lin.bias is None for lin in linears):
        return weight, None
    biases = [lin.bias if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
              for lin in linears]  # fmt: skip
    return weight, torch.cat(biases)


def _transpose_pays(head: torch.nn.Linear, max_new_tokens: int) -> bool:
    """A (rows <= 64) x H @ H x V product is 1.6x faster from a contiguous H x V copy of the
    weight on CPU (measured 23 vs 36 ms at V=151936); the copy (150 ms) pays after ~12 steps."""
    return (
        head.weight.device.type == "cpu" and head.weight.numel() >= 2**22 and max_new_tokens >= 16
    )


class _TransposedHead:
    """`head(hidden)` from a contiguous transposed copy of the head's weight, made once."""

    def __init__(self, head: torch.nn.Linear):
        self.weight_t = head.weight.t().contiguous()
        self.bias = head.bias

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return hidden @ self.weight_t
        return torch.addmm(self.bias, hidden, self.weight_t)


def _categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row from unnormalised `probs` (N, V), by inverse CDF in float64.

    The same distribution as `torch.multinomial(probs, 1)`, which on CPU draws V exponential
    variates per row (60 ms a step at V=151936, 16 rows): this draws one uniform per row and
    does one cumulative sum. A zero-probability token can never be drawn (its CDF step is empty).
    """
    cdf = probs.cumsum(dim=-1, dtype=torch.float64)
    u = torch.rand(
        (probs.shape[0], 1), dtype=torch.float64, device=probs.device, generator=generator
    )
    token = torch.searchsorted(cdf, u * cdf[:, -1:], right=True).squeeze(-1)
    return token.clamp_(max=probs.shape[-1] - 1)


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero all but the smallest set of most likely tokens whose mass reaches top_p.

    Unnormalised on purpose: the sampler normalises. The top token is always kept, since the
    mass before it is 0 < top_p.
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    total = sorted_probs.sum(dim=-1, keepdim=True)
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p * total, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
