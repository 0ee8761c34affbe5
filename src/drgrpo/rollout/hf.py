"""Batched sampling from a Hugging Face causal LM with our own KV-cached decode loop.

Not `model.generate`: one loop we control keeps the sampler's log-probs exactly those that
`sequence_logprobs` recomputes (same positions, same fp32 log-softmax), and skips generate's
per-step processor machinery. What the loop does about where the time goes (the measurements
are in benchmarks/README.md):

- the prompt is prefilled by the model's own forward; each decode step of a Llama-shaped model
  (Llama, Qwen2) then runs on a preallocated KV cache (`LlamaStepper`): HF's DynamicCache
  concatenates the whole cache anew at every step, a cost that grows with the position;
- rows that sampled a stop id leave the batch at once (their cache slots are refilled by running
  rows), so a step costs what the running rows need, not what the longest row needs;
- q|k|v and gate|up are one matmul each, and cos/sin of every position are computed once;
- one categorical draw per row by inverse CDF instead of `torch.multinomial`, which on CPU
  draws V exponential variates per row.
Any other model steps through its own forward (`_HFStepper`), finished rows kept and masked.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

import torch

from drgrpo.models.hf_compat import cache_kwarg, new_cache, output_head
from drgrpo.models.logprobs import position_ids_from_mask, shared_prompts
from drgrpo.models.wrappers import reads_raw_weights
from drgrpo.rollout.engine import Rollouts, left_pad
from drgrpo.rollout.hf_fast import LlamaStepper, TransposedHead, transpose_pays


class HFRolloutEngine:
    """`RolloutEngine` over an in-process HF model; it samples from the very weights being trained."""

    def __init__(
        self,
        model: torch.nn.Module,
        stop_ids: int | Collection[int],
        pad_token_id: int,
        *,
        fast_decode: bool = True,
    ):
        """`stop_ids`: sampling any of these ends a row (`TokenRule.stop_ids`; one id is fine).
        `pad_token_id` may be one of them (pad == eos); otherwise it is never sampled.
        `fast_decode`: use the preallocated-cache decode step for Llama-shaped models (Llama,
        Qwen2) and drop finished rows; False (or any other model) steps through the model's own
        forward with a DynamicCache. Both sample the same distribution."""
        stops = [stop_ids] if isinstance(stop_ids, int) else sorted({int(s) for s in stop_ids})
        if not stops:
            raise ValueError("need at least one stop id")
        self.model = model
        self.stop_ids = tuple(stops)
        self.pad_token_id = pad_token_id
        # A pad that is not a stop id would be indistinguishable from padding once sampled.
        self._banned = None if pad_token_id in stops else pad_token_id
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

        A pad id that is not a stop id is never sampled (it would be indistinguishable from
        padding); like top-p, this truncates the sampling distribution but not
        `sampler_logprobs`.
        """
        if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
            raise ValueError("need at least one prompt, each with at least one token")
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

    def _prefill(self, prompts, prompt_mask, max_new_tokens):
        """The prompts through the decoder: (hidden state of each row's last prompt token, the
        stepper that continues from the cache, the head to apply)."""
        p = prompts.shape[1]
        decoder = self.model.get_decoder()
        head = output_head(self.model)
        cache = new_cache(self.model.config)
        first_position = prompt_mask.sum(dim=1)  # (n,) position of each row's first response token
        fast = self.fast_decode and LlamaStepper.supports(self.model)
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
        if not fast:
            stepper = _HFStepper(decoder, cache, prompt_mask, first_position, max_new_tokens)
            return hidden, stepper, head
        hidden = hidden if which is None else hidden[which]
        stepper = LlamaStepper(decoder, cache, prompt_mask, first_position, max_new_tokens, which)
        if (
            type(head) is torch.nn.Linear
            and reads_raw_weights(head)
            and transpose_pays(head, max_new_tokens)
        ):
            head = TransposedHead(head)
        return hidden, stepper, head

    def _decode(
        self, prompts, prompt_mask, max_new_tokens, temperature, top_p, generator
    ) -> Rollouts:
        n, device = prompts.shape[0], prompts.device
        hidden, stepper, head = self._prefill(prompts, prompt_mask, max_new_tokens)
        response = torch.full(
            (n, max_new_tokens), self.pad_token_id, dtype=torch.long, device=device
        )
        logprobs = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=device)
        response_mask = torch.zeros((n, max_new_tokens), dtype=torch.bool, device=device)
        stops = torch.tensor(self.stop_ids, device=device)
        done = torch.zeros(n, dtype=torch.bool, device=device)
        # Original row ids of the rows the stepper still computes, in its order. A stepper that can
        # drop rows (`LlamaStepper`) only holds running rows; the generic one keeps finished rows
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
            finished = live & torch.isin(token, stops)
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
            if self._banned is not None:
                logits[:, self._banned] = -torch.inf
            token = logits.argmax(dim=-1)
        else:
            probs = logprobs.exp()
            if self._banned is not None:
                probs[:, self._banned] = 0.0
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


def _categorical(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One draw per row from unnormalised `probs` (N, V), by inverse CDF in float64.

    The same distribution as `torch.multinomial(probs, 1)`, which on CPU draws V exponential
    variates per row (a large share of a decode step at a 152k vocabulary): this draws one
    uniform per row and does one cumulative sum. A zero-probability token can never be drawn (its CDF step is empty).
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
