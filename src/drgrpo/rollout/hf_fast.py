"""The fast decode step of Llama-shaped models (Llama, Qwen2): a preallocated KV cache, finished
rows dropped, fused projections. Opt-in (`HFRolloutEngine(fast_decode=True)`), and refused for
models it does not support (`LlamaStepper.supports`): it reads the modules' weights directly.
"""

from __future__ import annotations

import sys

import torch

from drgrpo.models.hf_compat import layer_keys_values
from drgrpo.models.wrappers import reads_raw_weights


class LlamaStepper:
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


def transpose_pays(head: torch.nn.Linear, max_new_tokens: int) -> bool:
    """Whether to copy a large CPU head to a contiguous H x V layout once: a (rows <= 64) x H @
    H x V product is faster from it, and the copy pays back within a few decode steps (the
    measurement is in benchmarks/README.md)."""
    return (
        head.weight.device.type == "cpu" and head.weight.numel() >= 2**22 and max_new_tokens >= 16
    )


class TransposedHead:
    """`head(hidden)` from a contiguous transposed copy of the head's weight, made once."""

    def __init__(self, head: torch.nn.Linear):
        self.weight_t = head.weight.t().contiguous()
        self.bias = head.bias

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return hidden @ self.weight_t
        return torch.addmm(self.bias, hidden, self.weight_t)
