"""Batched sampling from a Hugging Face causal LM with our own KV-cached decode loop.

Not `model.generate`: one loop we control keeps the sampler's log-probs exactly those that
`sequence_logprobs` recomputes (same positions, same fp32 log-softmax), and skips generate's
per-step processor machinery.
"""

from __future__ import annotations

import dataclasses
import inspect

import torch
from transformers.cache_utils import DynamicCache

from drgrpo.models.logprobs import position_ids_from_mask
from drgrpo.rollout.engine import Rollouts, left_pad


class HFRolloutEngine:
    """`RolloutEngine` over an in-process HF model; it samples from the very weights being trained."""

    def __init__(self, model: torch.nn.Module, eos_token_id: int, pad_token_id: int):
        if eos_token_id == pad_token_id:
            # Masking pad would then also mask every real stop token.
            raise ValueError(f"pad_token_id must differ from eos_token_id (both {eos_token_id})")
        self.model = model
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id

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
        cache_kwarg = _cache_kwarg(decoder)

        # One buffer for the whole run; each step attends to a growing prefix of it.
        mask = torch.zeros((n, p + max_new_tokens), dtype=torch.long, device=device)
        mask[:, :p] = prompt_mask
        response = torch.full(
            (n, max_new_tokens), self.pad_token_id, dtype=torch.long, device=device
        )
        logprobs = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        first_position = prompt_mask.sum(dim=1, keepdim=True)

        hidden = decoder(
            input_ids=prompts,
            attention_mask=mask[:, :p],
            position_ids=position_ids_from_mask(prompt_mask),
            use_cache=True,
            **{cache_kwarg: cache},
        ).last_hidden_state[:, -1]
        for step in range(max_new_tokens):
            token, logprob = self._sample(head(hidden), temperature, top_p, generator)
            response[:, step] = token.masked_fill_(done, self.pad_token_id)
            logprobs[:, step] = logprob.masked_fill_(done, 0.0)
            # A row's token counts iff the row was still running when it was sampled (so EOS does).
            mask[:, p + step] = ~done
            done |= token == self.eos_token_id
            if step + 1 == max_new_tokens or bool(done.all()):
                break
            hidden = decoder(
                input_ids=token[:, None],
                attention_mask=mask[:, : p + step + 1],
                position_ids=first_position + step,
                use_cache=True,
                **{cache_kwarg: cache},
            ).last_hidden_state[:, -1]

        steps = step + 1
        return Rollouts(
            prompt_ids=prompts,
            prompt_mask=prompt_mask,
            response_ids=response[:, :steps],
            response_mask=mask[:, p : p + steps].bool(),
            sampler_logprobs=logprobs[:, :steps],
            finish_reason=["stop" if d else "length" for d in done.tolist()],
        )

    def _sample(self, logits, temperature, top_p, generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(token, log-prob of token under softmax(logits / temperature)) per row.

        Overwrites `logits` when it is already fp32: the engine passes a fresh head output.
        """
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
        logprobs = torch.log_softmax(logits if temperature == 0 else logits / temperature, dim=-1)
        if temperature == 0:
            logits[:, self.pad_token_id] = -torch.inf
            token = logits.argmax(dim=-1)
        else:
            probs = logprobs.exp()
            probs[:, self.pad_token_id] = 0.0
            if top_p < 1:
                probs = _nucleus(probs, top_p)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return token, logprobs.gather(-1, token[:, None]).squeeze(-1)


def _nucleus(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero all but the smallest set of most likely tokens whose mass reaches top_p.

    Unnormalised on purpose: multinomial normalises. The top token is always kept, since the
    mass before it is 0 < top_p.
    """
    sorted_probs, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    total = sorted_probs.sum(dim=-1, keepdim=True)
    sorted_probs = sorted_probs.masked_fill(mass_before >= top_p * total, 0.0)
    return torch.zeros_like(probs).scatter_(-1, order, sorted_probs)


def _cache_kwarg(decoder: torch.nn.Module) -> str:
    # transformers 5 renamed `past_key_values` to `cache` (the old name warns until 5.40).
    params = inspect.signature(decoder.forward).parameters
    return "cache" if "cache" in params else "past_key_values"
