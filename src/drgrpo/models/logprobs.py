"""Per-token log-probabilities (and entropies) of response tokens under a causal LM.

The vocabulary projection is the memory peak of RL training: N*T rows times V columns in fp32
is 10 GB for 64 x 256 tokens at Qwen's V=151936. So the base model runs once, and the head is
applied to row chunks (a large vocabulary also in tiles, at most `CHUNK_BYTES` of logits at a
time), each recomputed in backward instead of keeping every chunk's logits alive until backward.

For a plain `nn.Linear` head (every HF causal LM) one autograd function does the chunks
(`_HeadStats`): its backward rebuilds each chunk's logits once, turns them into the logits'
gradient in place, and adds that chunk's share of the head's weight gradient into one buffer,
so that no (V, H) gradient is allocated per chunk and no softmax pass is spent twice. Other
heads, and Linear heads whose `.weight` is not what their forward uses (peft, DTensor shards:
`models/wrappers.py`), go through `torch.utils.checkpoint` per chunk.

The decoder side (one padded batch, length buckets, prompts shared by a group) is the forward of
`models/forward.py`'s `LogprobModel`, the one path `sequence_logprobs` takes.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from drgrpo.models.wrappers import reads_raw_weights

CHUNK_BYTES = 64 * 2**20
"""Largest fp32 logits block alive at once (a few such blocks exist together). A chunk of
`chunk_size` rows whose logits are larger is split into vocabulary tiles: 16384 columns for 1024
rows at V=151936. Never binds at V=100."""
MIN_TILE = 1024
"""Narrowest vocabulary tile (narrower ones make the matmuls inefficient)."""


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions count real tokens only, so a left-padded prompt starts at position 0.

    Padding slots get position 0 (they are masked, the value only has to be valid). The
    rollout engine uses the same rule, which keeps its logprobs equal to ours.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def sequence_logprobs(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    response_start: int,
    *,
    temperature: float = 1.0,
    chunk_size: int = 1024,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(token_t | prefix) for the response columns `input_ids[:, response_start:]`.

    `input_ids` is (N, P+T): left-padded prompts then right-padded responses, and
    `response_start` is P. Returns `(logprobs, entropy)`, both (N, T) in fp32 (fp64 for an fp64
    model), computed from logits / temperature; `entropy` is None unless `with_entropy`.
    Positions where `attention_mask` is 0 are exactly 0 in both. Differentiable w.r.t. the
    model's parameters.

    `model` is a causal LM or its `LogprobModel` root (FSDP2: the sharded root); either way the
    computation is that root's `forward()`, so module hooks run.
    """
    # Imported here: forward.py builds on this module's pieces (buckets, shared prompts, heads).
    from drgrpo.models.forward import as_logprob_model

    root = as_logprob_model(model)
    return root(input_ids, attention_mask, response_start, temperature, chunk_size, with_entropy)


def shared_prompts(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, response_start: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(unique prompt ids, their mask, row -> unique index) when rows share prompts, else None.

    An RL batch holds each prompt K times (a group): its forward is the same K times over. The
    prompts' keys and values are computed once and every row attends to its prompt's. Shared
    when there are at most half as many distinct prompts as rows; padding columns no distinct
    prompt uses are cut.
    """
    n = input_ids.shape[0]
    if n < 2:
        return None
    prompt = torch.cat(
        [input_ids[:, :response_start], attention_mask[:, :response_start].long()], 1
    )
    unique, inverse = torch.unique(prompt, dim=0, return_inverse=True)
    if 2 * unique.shape[0] > n:
        return None
    ids, mask = unique[:, :response_start], unique[:, response_start:].bool()
    used = mask.any(dim=0).nonzero()
    first = int(used[0]) if len(used) else response_start - 1
    return ids[:, first:], mask[:, first:], inverse


BUCKET_MIN_ROWS = 16
"""Smallest group `length_buckets` makes: a forward of fewer rows wastes more than padding would."""


def length_buckets(attention_mask: torch.Tensor, response_start: int) -> list[torch.Tensor]:
    """Row groups that waste the fewest padded tokens: rows sorted by response length, split into
    2^k equal groups of >= BUCKET_MIN_ROWS, as long as each halving saves >= 10% of the tokens.

    A right-padded response batch of an RL step is mostly padding when lengths vary (a 128-token
    cap with a mean of 60): every forward and backward over those columns is wasted work.
    """
    n = attention_mask.shape[0]
    prompt_len = attention_mask[:, :response_start].sum(dim=1)
    response_len = attention_mask[:, response_start:].sum(dim=1)
    order = torch.argsort(response_len * (response_start + 1) + prompt_len, stable=True)

    def cost(groups):
        return sum(len(g) * int(prompt_len[g].max() + response_len[g].max()) for g in groups)

    best = [torch.arange(n, device=attention_mask.device)]
    best_cost = cost(best)
    parts = 2
    while n // parts >= BUCKET_MIN_ROWS:
        groups = list(order.tensor_split(parts))
        groups_cost = cost(groups)
        if groups_cost > 0.9 * best_cost:
            break
        best, best_cost, parts = groups, groups_cost, parts * 2
    return best


def response_stats(head, hidden, targets, valid, temperature, chunk_size, with_entropy):
    """(logprobs, entropy or None), each (n, t), from the hidden states (n, t, h) predicting
    `targets` (n, t) through the output `head`; zero where `valid` is 0."""
    n, t, h = hidden.shape
    args = (hidden.reshape(n * t, h), targets.reshape(n * t))
    # The fused head reads head.weight: only for a plain Linear whose weight is what it uses
    # (a peft LoRA head's .weight is the base weight; a DTensor shard is not the weight).
    if type(head) is torch.nn.Linear and reads_raw_weights(head):
        stats = _HeadStats.apply(
            *args, head.weight, head.bias, head, temperature, chunk_size, with_entropy
        )
    else:
        rows = max(1, min(chunk_size, CHUNK_BYTES // (4 * head.weight.shape[0])))
        stats = _chunked_head_stats(head, *args, temperature, rows, with_entropy)
    stats = stats.reshape(-1, n, t)
    valid = valid.bool()
    logprobs = stats[0].masked_fill(~valid, 0.0)
    entropy = stats[1].masked_fill(~valid, 0.0) if with_entropy else None
    return logprobs, entropy


def _chunked_head_stats(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    chunk_size: int,
    with_entropy: bool,
) -> torch.Tensor:
    """`_chunk_stats` over row chunks; under autograd each chunk's logits are rebuilt in backward."""
    recompute = torch.is_grad_enabled() and hidden.requires_grad
    pieces = []
    for lo in range(0, hidden.shape[0], chunk_size):
        args = (head, hidden[lo : lo + chunk_size], targets[lo : lo + chunk_size])
        if recompute:
            # The head has no randomness, so there is no RNG state to save and restore.
            piece = checkpoint(
                _chunk_stats,
                *args,
                temperature,
                with_entropy,
                use_reentrant=False,
                preserve_rng_state=False,
            )
        else:
            piece = _chunk_stats(*args, temperature, with_entropy)
        pieces.append(piece)
    return torch.cat(pieces, dim=-1)


def _chunk_stats(
    head: torch.nn.Module,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    temperature: float,
    with_entropy: bool,
) -> torch.Tensor:
    """(1 or 2, rows): log-prob of each target and optionally the entropy, in >= fp32."""
    logits = head(hidden)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    log_normalizer = logits.logsumexp(dim=-1)
    logprob = logits.gather(-1, targets[:, None]).squeeze(-1) - log_normalizer
    if not with_entropy:
        return logprob[None]
    # H = log Z - sum_v p_v * logit_v, with p = softmax(logits).
    probs = torch.exp(logits - log_normalizer[:, None])
    entropy = log_normalizer - (probs * logits).sum(dim=-1)
    return torch.stack([logprob, entropy])


class _HeadStats(torch.autograd.Function):
    """(1 or 2, rows): log-prob of each target (and the entropy) under a Linear head, in chunks.

    Rows go in chunks of `rows`. When a chunk's logits fit in CHUNK_BYTES, they are one call of
    the head; otherwise (a large vocabulary) they are vocabulary tiles of the weight, folded into
    an online log-sum-exp (and entropy), so that large row chunks keep the matmuls efficient
    while at most one tile of logits exists at a time. Forward keeps only hidden, targets, log Z
    and the entropy. Backward, per chunk and tile: logits again, p = softmax, the logits'
    gradient in place,

        d logprob / d z = onehot(target) - p          d entropy / d z = -p * (log p + H)

    (z = logits / temperature), then `addmm_` into the input gradient and into one weight
    gradient buffer. Chunks are visited last first, as autograd would.
    """

    # CUDA autocast (bf16) is on in backward exactly when it was on in forward.
    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, hidden, targets, weight, bias, head, temperature, rows, with_entropy):
        tile = _vocab_tile(rows, weight.shape[0])
        pieces, log_normalizers = [], []
        for lo in range(0, hidden.shape[0], rows):
            h, t = hidden[lo : lo + rows], targets[lo : lo + rows]
            if tile is None:
                piece, log_z = _linear_chunk_stats(head, h, t, temperature, with_entropy)
            else:
                piece, log_z = _tiled_chunk_stats(
                    h, t, weight, bias, temperature, with_entropy, tile
                )
            pieces.append(piece)
            log_normalizers.append(log_z)
        stats = torch.cat(pieces, dim=-1)
        entropy = stats[1] if with_entropy else None
        ctx.save_for_backward(hidden, targets, weight, bias, torch.cat(log_normalizers), entropy)
        ctx.head, ctx.temperature, ctx.rows, ctx.tile = head, temperature, rows, tile
        return stats

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_stats):
        hidden, targets, weight, bias, log_z, entropy = ctx.saved_tensors
        head, temperature, rows, tile = ctx.head, ctx.temperature, ctx.rows, ctx.tile
        grad_logprob = grad_stats[0]
        grad_entropy = grad_stats[1] if entropy is not None else None
        grad_hidden = torch.zeros_like(hidden)
        grad_weight = torch.zeros_like(weight) if ctx.needs_input_grad[2] else None
        grad_bias = torch.zeros_like(bias) if bias is not None and ctx.needs_input_grad[3] else None
        vocab = weight.shape[0]
        starts = list(range(0, hidden.shape[0], rows))
        with torch.no_grad():
            for lo in reversed(starts):
                hi = min(lo + rows, hidden.shape[0])
                h = hidden[lo:hi]
                g = grad_logprob[lo:hi, None]
                g_h = None if grad_entropy is None else grad_entropy[lo:hi, None]
                for v0 in range(0, vocab, tile or vocab):
                    v1 = min(v0 + (tile or vocab), vocab)
                    if tile is None:
                        log_p = head(h)  # one call of the module: its hooks see each chunk
                    else:
                        b = None if bias is None else bias[v0:v1]
                        log_p = torch.nn.functional.linear(h, weight[v0:v1], b)
                    log_p = log_p.to(torch.promote_types(log_p.dtype, torch.float32))
                    if temperature != 1.0:
                        log_p.div_(temperature)
                    log_p.sub_(log_z[lo:hi, None])  # log softmax(z) on this tile
                    if g_h is None:
                        grad_z = log_p.exp_().mul_(-g)  # -p * g
                    else:
                        p = log_p.exp()
                        grad_z = log_p.add_(entropy[lo:hi, None]).mul_(g_h)
                        grad_z = grad_z.add_(g).mul_(p).neg_()  # -p * (g + g_H * (log p + H))
                    inside = (targets[lo:hi] >= v0) & (targets[lo:hi] < v1)
                    local = (targets[lo:hi] - v0).clamp(0, v1 - v0 - 1)[:, None]
                    grad_z.scatter_add_(-1, local, g * inside[:, None])
                    if temperature != 1.0:
                        grad_z.div_(temperature)
                    grad_logits = grad_z.to(weight.dtype)
                    grad_hidden[lo:hi].addmm_(grad_logits, weight[v0:v1])
                    if grad_weight is not None:
                        grad_weight[v0:v1].addmm_(grad_logits.T, h.to(weight.dtype))
                    if grad_bias is not None:
                        grad_bias[v0:v1] += grad_logits.sum(0)
        return grad_hidden, None, grad_weight, grad_bias, None, None, None, None


def _vocab_tile(rows: int, vocab: int) -> int | None:
    """Vocabulary columns per tile for chunks of `rows`; None when a chunk's logits fit whole."""
    if rows * vocab * 4 <= CHUNK_BYTES:
        return None
    return max(MIN_TILE, CHUNK_BYTES // (4 * rows))


def _linear_chunk_stats(head, hidden, targets, temperature, with_entropy):
    """((1 or 2, rows) stats, (rows,) log Z) of one chunk; the logits are modified in place."""
    z = head(hidden)
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    if temperature != 1.0:
        z.div_(temperature)
    log_z = z.logsumexp(dim=-1)
    logprob = z.gather(-1, targets[:, None]).squeeze(-1) - log_z
    if not with_entropy:
        return logprob[None], log_z
    # H = -sum_v p_v log p_v, as a row-wise dot product (no (rows, V) product is allocated).
    log_p = z.sub_(log_z[:, None])
    entropy = -(log_p.exp().unsqueeze(1) @ log_p.unsqueeze(2)).reshape(-1)
    return torch.stack([logprob, entropy]), log_z


def _tiled_chunk_stats(hidden, targets, weight, bias, temperature, with_entropy, tile):
    """`_linear_chunk_stats` over vocabulary tiles, with an online log-sum-exp.

    Per row, relative to the running maximum m: S = sum_v e^(z_v - m), Q = sum_v e^(z_v - m)
    (z_v - m). A new tile with maximum m' > m rescales both by e^(m - m') (Q also gains
    S (m - m')). Then log Z = m + log S and H = log S - Q / S.
    """
    vocab = weight.shape[0]
    target_logit = torch.zeros(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    m = s = q = None
    for v0 in range(0, vocab, tile):
        v1 = min(v0 + tile, vocab)
        z = torch.nn.functional.linear(hidden, weight[v0:v1], None if bias is None else bias[v0:v1])
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        if temperature != 1.0:
            z.div_(temperature)
        if m is None:
            target_logit = target_logit.to(z.dtype)
        inside = (targets >= v0) & (targets < v1)
        local = (targets - v0).clamp(0, v1 - v0 - 1)[:, None]
        target_logit = torch.where(inside, z.gather(-1, local).squeeze(-1), target_logit)
        tile_max = z.amax(dim=-1)
        new_m = tile_max if m is None else torch.maximum(m, tile_max)
        z.sub_(new_m[:, None])
        e = z.exp() if with_entropy else z.exp_()
        tile_s = e.sum(dim=-1)
        tile_q = (e.unsqueeze(1) @ z.unsqueeze(2)).reshape(-1) if with_entropy else None
        if m is None:
            s, q = tile_s, tile_q
        else:
            alpha = torch.exp(m - new_m)
            if with_entropy:
                q = alpha * (q + s * (m - new_m)) + tile_q
            s = alpha * s + tile_s
        m = new_m
    log_s = torch.log(s)
    log_z = m + log_s
    logprob = target_logit - log_z
    if not with_entropy:
        return logprob[None], log_z
    return torch.stack([logprob, log_s - q / s]), log_z
