"""VLLMRolloutEngine's own logic without vLLM: the weights it sends, pad rejection, row seeds.

A scripted stand-in for `vllm.LLM` (same seed rule for n > 1: the k-th sample gets seed + k)
replaces the engine; test_vllm.py runs the real one.
"""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from drgrpo.models.tiny import build_model
from drgrpo.rollout.vllm import VLLMRolloutEngine, _hf_name, hf_weights

PAD, EOS = 0, 2


class FakeLLM:
    """Draws ids 0..5 uniformly from torch.Generator(seed); log-prob of token t is -(t + 0.5)."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params, use_tqdm=False):
        self.calls.append(list(zip(prompts, params, strict=True)))
        return [SimpleNamespace(outputs=[self._sample(p, sp.seed + k, sp) for k in range(sp.n)])
                for p, sp in zip(prompts, params, strict=True)]  # fmt: skip

    @staticmethod
    def _sample(prompt, seed, sp):
        g = torch.Generator().manual_seed(seed)
        tokens = []
        while len(tokens) < sp.max_tokens:
            tokens.append(int(torch.randint(6, (), generator=g)))
            if tokens[-1] in sp.stop_token_ids:
                break
        reason = "stop" if tokens[-1] in sp.stop_token_ids else "length"
        logprobs = [{t: SimpleNamespace(logprob=-(t + 0.5))} for t in tokens]
        return SimpleNamespace(token_ids=tokens, logprobs=logprobs, finish_reason=reason)


def fake_engine(stop_ids, pad=PAD) -> VLLMRolloutEngine:
    engine = object.__new__(VLLMRolloutEngine)
    engine.__dict__.update(
        stop_token_ids=frozenset(stop_ids), pad_token_id=pad, allow_top_p=False, sleeps=False,
        llm=FakeLLM(), max_model_len=512, pad_redraws=0, _asleep=set(), _send_tied_head=True, _reset_prefix_cache=True,
        _tokens_prompt=lambda prompt_token_ids: prompt_token_ids,
        _sampling_params=lambda **kw: SimpleNamespace(**kw),
    )  # fmt: skip
    return engine


ROWS = [[1, 3]] * 4 + [[1, 4, 4]] * 3 + [[1, 5]]


def responses(r) -> list[list[int]]:
    return [ids[m].tolist() for ids, m in zip(r.response_ids, r.response_mask, strict=True)]


def test_pad_outside_the_stops_is_rejected_and_redrawn():
    engine = fake_engine({EOS})
    r = engine.generate(ROWS, max_new_tokens=12, seed=7)
    assert engine.pad_redraws > 0
    for tokens, reason in zip(responses(r), r.finish_reason, strict=True):
        assert PAD not in tokens
        assert (reason == "stop") == (tokens[-1] == EOS)
        assert reason == "stop" or len(tokens) == 12
    # Every continuation resumes a row from its prompt and the tokens kept before the pad.
    for prompt, sp in (x for call in engine.llm.calls[1:] for x in call):
        kept = len(prompt) - (3 if prompt[1] == 4 else 2)  # minus the original prompt
        assert sp.n == 1 and sp.max_tokens == 12 - kept
        assert PAD not in prompt
    # The log-probs are the sampler's own for every kept token (the fake's -(t + 0.5)).
    expected = -(r.response_ids.float() + 0.5) * r.response_mask
    assert torch.equal(r.sampler_logprobs, expected)


def test_pad_that_is_a_stop_id_ends_a_row_like_any_stop():
    engine = fake_engine({EOS, PAD})
    r = engine.generate(ROWS, max_new_tokens=12, seed=7)
    assert engine.pad_redraws == 0 and len(engine.llm.calls) == 1
    ends = [t[-1] for t, why in zip(responses(r), r.finish_reason, strict=True) if why == "stop"]
    assert PAD in ends  # a sampled pad is kept, inside the mask, as the row's stop
    assert r.response_mask.sum() == sum(len(t) for t in responses(r))


def test_groups_go_as_one_request_and_row_seeds_ignore_the_split():
    engine = fake_engine({EOS})
    whole = engine.generate(ROWS, max_new_tokens=10, seed=3)
    assert [sp.n for _, sp in engine.llm.calls[0]] == [4, 3, 1]
    head = engine.generate(ROWS[:5], max_new_tokens=10, seed=3)  # splits the second group
    tail = engine.generate(ROWS[5:], max_new_tokens=10, seed=3, row_offset=5)
    assert responses(head) + responses(tail) == responses(whole)
    other = engine.generate(ROWS, max_new_tokens=10, seed=4)
    assert responses(other) != responses(whole)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert responses(engine.generate(ROWS, max_new_tokens=10, generator=g1)) == responses(
        engine.generate(ROWS, max_new_tokens=10, generator=g2)
    )


def test_refusals_name_the_problem():
    engine = fake_engine({EOS})
    with pytest.raises(ValueError, match="renormalised over the nucleus"):
        engine.generate(ROWS, max_new_tokens=4, top_p=0.9)
    with pytest.raises(ValueError, match="max_model_len"):
        engine.generate(ROWS, max_new_tokens=600)
    with pytest.raises(ValueError, match="seed or generator"):
        engine.generate(ROWS, max_new_tokens=4, seed=1, generator=torch.Generator())


def test_a_tied_model_sends_its_head_explicitly():
    model = build_model("tiny", 100, num_hidden_layers=1)
    sent = list(hf_weights(model))
    names = [n for n, _ in sent]
    assert set(names) == set(model.state_dict()) - {"model.rotary_emb.inv_freq"}
    embed = names.index("model.embed_tokens.weight")
    assert names[embed + 1] == "lm_head.weight" and sent[embed + 1][1] is sent[embed][1]
    assert "lm_head.weight" not in dict(hf_weights(model, tied_head=False))
    untied = build_model("tiny", 100, num_hidden_layers=1, tie_word_embeddings=False)
    assert [n for n, _ in hf_weights(untied)].count("lm_head.weight") == 1


def test_wrapper_prefixes_are_dropped():
    assert _hf_name("_orig_mod.model.norm.weight") == "model.norm.weight"
    assert _hf_name("module.lm_head.weight") == "lm_head.weight"
    assert (_hf_name("base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight")
            == "model.layers.0.self_attn.q_proj.weight")  # fmt: skip


def test_a_lora_model_sends_merged_weights_and_stays_unmerged():
    peft = pytest.importorskip("peft")
    model = build_model("tiny", 100, num_hidden_layers=1)
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
    lora = peft.get_peft_model(model, config)
    with torch.no_grad():  # B starts at zero; a nonzero B makes the merge visible
        for name, param in lora.named_parameters():
            if "lora_B" in name:
                param.normal_(generator=torch.Generator().manual_seed(len(name)))
    before = {n: p.clone() for n, p in lora.named_parameters()}
    sent = dict(hf_weights(lora))
    expected = copy.deepcopy(lora).merge_and_unload().state_dict()
    assert set(sent) == set(expected) - {"model.rotary_emb.inv_freq"}
    for name, tensor in sent.items():
        torch.testing.assert_close(tensor, expected[name], rtol=0, atol=1e-6, msg=name)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(sent[q], model.model.layers[0].self_attn.q_proj.base_layer.weight)
    for name, param in lora.named_parameters():  # the model itself is untouched
        assert torch.equal(param, before[name]), name


def test_fsdp2_shards_are_gathered_to_full_tensors(tmp_path):
    dist = pytest.importorskip("torch.distributed")
    from torch.distributed.fsdp import fully_shard

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)  # fmt: skip
    try:
        reference = build_model("tiny", 100, num_hidden_layers=1)
        model = build_model("tiny", 100, num_hidden_layers=1)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        assert type(model.model.embed_tokens.weight).__name__ == "DTensor"
        sent = list(hf_weights(model))
        expected = reference.state_dict()
        assert [n for n, _ in sent][:2] == ["model.embed_tokens.weight", "lm_head.weight"]
        for name, tensor in sent:
            assert type(tensor) is torch.Tensor and torch.equal(tensor, expected[name]), name
    finally:
        dist.destroy_process_group()


def test_greedy_sends_one_request_per_group_and_bans_pad_by_bias():
    engine = fake_engine({EOS})
    r = engine.generate(ROWS, max_new_tokens=6, temperature=0.0)
    (call,) = engine.llm.calls  # greedy cannot redraw, so nothing is rejected
    assert [sp.n for _, sp in call] == [1, 1, 1]
    assert all(sp.logit_bias == {PAD: -100.0} and PAD not in sp.stop_token_ids for _, sp in call)
    got = responses(r)
    assert got[:4] == [got[0]] * 4 and got[4:7] == [got[4]] * 3
