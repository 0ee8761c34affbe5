"""`LogprobModel`: the whole log-prob computation as one module's `forward()`.

FSDP2 and DDP act through module hooks: `fully_shard(root)` unshards the root's own parameters
(embedding, final norm, head) in the root's pre-forward hook, and every decoder layer's in its
own. A function that calls `model.get_decoder()` and the head directly runs no root hook, so
under FSDP2 it meets DTensor shards. Wrapping the causal LM in this root and calling it runs
every hook; `sequence_logprobs` routes through it, so there is one forward path.
"""

from __future__ import annotations

import torch

from drgrpo.models import logprobs as lp
from drgrpo.models.hf_compat import (
    cache_kwarg,
    cache_layers,
    layer_keys_values,
    new_cache,
    output_head,
)

Stats = tuple[torch.Tensor, torch.Tensor | None]


class LogprobModel(torch.nn.Module):
    """Root module over a Hugging Face causal LM (plain, peft-wrapped, or with sharded layers).

    `forward(input_ids, attention_mask, response_start)` returns `(logprobs, entropy)`, exactly
    `sequence_logprobs`'s contract (see there). The LM is `self.model`, so state-dict keys are
    the LM's prefixed with `model.`.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    @property
    def config(self):
        return self.model.config

    def forward(
        self,
        input_ids: torch.Tensor,  # (N, P+T)
        attention_mask: torch.Tensor,  # (N, P+T)
        response_start: int,
        temperature: float = 1.0,
        chunk_size: int = 1024,
        with_entropy: bool = False,
    ) -> Stats:  # (N, T) each
        check_arguments(input_ids, response_start, temperature, chunk_size)
        args = (temperature, chunk_size, with_entropy)
        # Under activation checkpointing in training, HF turns the layers' cache off, so the
        # prompts' keys and values cannot be shared: every row runs its own prompt.
        checkpointing = torch.is_grad_enabled() and activation_checkpointing(self.model)
        # FSDP2 all-gathers a layer's weights at each call of it: every rank must call the decoder
        # equally often, so a sharded model runs one padded batch (the number of buckets and the
        # prompt sharing depend on each rank's data).
        if self._sharded_layers():
            return self._padded(input_ids, attention_mask, response_start, *args)
        prompts = None if checkpointing else lp.shared_prompts(input_ids, attention_mask,
                                                               response_start)  # fmt: skip
        buckets = lp.length_buckets(attention_mask, response_start)
        if prompts is None and len(buckets) == 1:
            return self._padded(input_ids, attention_mask, response_start, *args)
        prompt_state = None if prompts is None else self._prompt_forward(*prompts[:2])
        # Each bucket is cut to its own width; the results go back in the callers' row order.
        n, t = input_ids.shape[0], input_ids.shape[1] - response_start
        pieces = []
        for rows in buckets:
            mask = attention_mask[rows]
            used_response = mask[:, response_start:].any(dim=0).nonzero()
            width = int(used_response[-1]) + 1 if len(used_response) else 1
            end = response_start + width
            if prompts is not None:
                stats = self._after_prompts(
                    prompt_state, prompts[1], prompts[2][rows], input_ids[rows, response_start:end],
                    mask[:, response_start:end], *args,
                )  # fmt: skip
            else:
                used_prompt = mask[:, :response_start].any(dim=0).nonzero()
                first = int(used_prompt[0]) if len(used_prompt) else response_start - 1
                stats = self._padded(
                    input_ids[rows, first:end], mask[:, first:end], response_start - first, *args
                )
            pieces.append(
                [torch.nn.functional.pad(x, (0, t - width)) for x in stats if x is not None]
            )
        inverse = torch.empty(n, dtype=torch.long, device=input_ids.device)
        inverse[torch.cat(buckets)] = torch.arange(n, device=input_ids.device)
        logprobs = torch.cat([p[0] for p in pieces])[inverse]
        entropy = torch.cat([p[1] for p in pieces])[inverse] if with_entropy else None
        return logprobs, entropy

    def _sharded_layers(self) -> bool:
        from drgrpo.models.wrappers import _is_fsdp2

        return any(_is_fsdp2(m) for m in self.model.modules())

    def _padded(self, input_ids, attention_mask, response_start, *args) -> Stats:
        """The log-probs of one padded batch, as it is laid out."""
        hidden = self.model.get_decoder()(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=lp.position_ids_from_mask(attention_mask),
            use_cache=False,
        ).last_hidden_state
        # The hidden state at column j predicts the token at column j + 1.
        hidden = hidden[:, response_start - 1 : -1]
        return self._stats(
            hidden, input_ids[:, response_start:], attention_mask[:, response_start:], *args
        )

    def _prompt_forward(self, prompt_ids, prompt_mask):
        """The distinct prompts through the decoder: (keys/values per layer, last hidden state)."""
        decoder = self.model.get_decoder()
        cache = new_cache(self.config)
        hidden = decoder(
            input_ids=prompt_ids,
            attention_mask=prompt_mask,
            position_ids=lp.position_ids_from_mask(prompt_mask),
            use_cache=True,
            **{cache_kwarg(decoder): cache},
        ).last_hidden_state[:, -1]  # left-padded: the last column is each prompt's last token
        return [layer_keys_values(cache, i) for i in range(len(cache_layers(cache)))], hidden

    def _after_prompts(self, prompt_state, prompt_mask, which, responses, response_mask,
                       *args) -> Stats:  # fmt: skip
        """Response log-probs of rows whose prompts `_prompt_forward` ran (row i: prompt
        `which[i]`): the last prompt hidden state predicts response token 0, the responses' own
        forward (attending to their prompt's cached keys and values) predicts tokens 1 .. t-1."""
        kv, last = prompt_state
        hidden = last[which][:, None]  # (r, 1, h)
        if responses.shape[1] > 1:
            decoder = self.model.get_decoder()
            cache = new_cache(self.config)
            for i, (keys, values) in enumerate(kv):
                cache.update(keys[which], values[which], i)
            mask = torch.cat([prompt_mask[which], response_mask[:, :-1]], dim=1)
            after = decoder(
                input_ids=responses[:, :-1],
                attention_mask=mask,
                position_ids=lp.position_ids_from_mask(mask)[:, prompt_mask.shape[1] :],
                use_cache=True,
                **{cache_kwarg(decoder): cache},
            ).last_hidden_state
            hidden = torch.cat([hidden, after], dim=1)  # (r, t, h)
        return self._stats(hidden, responses, response_mask, *args)

    def _stats(self, hidden, targets, valid, temperature, chunk_size, with_entropy) -> Stats:
        head = output_head(self.model)  # a softcapped head is not a plain Linear: generic path
        return lp.response_stats(head, hidden, targets, valid, temperature, chunk_size,
                                 with_entropy)  # fmt: skip


def activation_checkpointing(model) -> bool:
    """Whether a HF model in training mode recomputes its layers in backward (the flag HF sets
    on its checkpointed modules; read directly, so peft wrappers and any version agree)."""
    return model.training and any(getattr(m, "gradient_checkpointing", False) is True
                                  for m in model.modules())  # fmt: skip


def check_arguments(input_ids, response_start, temperature, chunk_size) -> None:
    if not 0 < response_start < input_ids.shape[1]:
        raise ValueError(
            f"response_start must be in [1, {input_ids.shape[1] - 1}] (the first response "
            f"token needs a prompt token before it), got {response_start}"
        )
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def as_logprob_model(model: torch.nn.Module) -> torch.nn.Module:
    """`model` itself when it is a `LogprobModel` (or DDP over one), else a fresh root over it.

    A fresh root runs no FSDP hook, so a sharded model that is not under its `LogprobModel`
    root is refused here rather than failing inside a matmul on DTensor shards.
    """
    inner = getattr(model, "module", None)  # DistributedDataParallel keeps its module here
    if isinstance(model, LogprobModel) or isinstance(inner, LogprobModel):
        return model
    from drgrpo.models.wrappers import _is_dtensor

    if any(_is_dtensor(p) for p in model.parameters()):
        raise ValueError(
            "this model's parameters are DTensor shards (FSDP2): compute log-probs through the "
            "LogprobModel root that was sharded (drgrpo.train.distributed.shard_model returns "
            "it), not through the bare causal LM"
        )
    return LogprobModel(model)
