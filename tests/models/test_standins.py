"""Real-model compatibility on local stand-ins (tests/standins.py): the token rule each one gets,
and drgrpo's log-probs and greedy rollouts against plain transformers, family by family.

The references are per row and unpadded (`model(ids)` on one sequence, `model.generate` on one
prompt), so they also check drgrpo's padding, position ids and row dropping.
"""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from drgrpo.models.logprobs import sequence_logprobs
from drgrpo.rollout import HFRolloutEngine, TokenRule
from standins import (
    ENDOFTEXT,
    FAMILIES,
    IM_END,
    IM_START,
    build_family_standin,
    build_qwen_standin,
)

PROMPTS = ["What is 3 + 4?", "Compute 12 * 7 - 7. We get", "x", "Solve for x: 2x + 3 = 11, so"]
MAX_NEW = 12


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("standins")
    made = {"qwen2": build_qwen_standin(root / "qwen2")}
    made["qwen2_pad_eos"] = build_qwen_standin(root / "qwen2_pad_eos", pad_equals_eos=True)
    made["qwen2_no_list"] = build_qwen_standin(root / "qwen2_no_list", stop_tokens=None)
    for family in FAMILIES:
        made[family] = build_family_standin(family, root / family)
    return made


def load(folder):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(folder)


def test_qwen_standin_loads_with_qwen_conventions(folders):
    model, tok = load(folders["qwen2"])
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert model.config.tie_word_embeddings
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    assert model.config.vocab_size > len(tok)  # padded embedding, as Qwen2.5 ships
    assert tok.bos_token is None and tok.eos_token == IM_END and tok.pad_token == ENDOFTEXT
    end, im_end = tok.convert_tokens_to_ids([ENDOFTEXT, IM_END])
    assert model.generation_config.eos_token_id == [im_end, end]
    # No BOS and no EOS added: the ids are the text's own; special tokens typed in a prompt are
    # the special ids (the qwen_math template relies on it).
    assert tok("What is 3 + 4?").input_ids == tok.encode("What is 3 + 4?", add_special_tokens=False)
    marked = tok.encode(f"{IM_START}user\nhi{IM_END}")
    assert marked[0] == tok.convert_tokens_to_ids(IM_START) and marked[-1] == im_end
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_token_rules_of_the_qwen_variants(folders):
    model, tok = load(folders["qwen2"])
    end, im_end = tok.convert_tokens_to_ids([ENDOFTEXT, IM_END])
    rule = TokenRule.from_tokenizer(tok, model.generation_config)
    assert rule == TokenRule(pad_id=end, stop_ids=frozenset({im_end, end}), eos_id=im_end)
    assert rule.encode_prompt(tok, "What is 3 + 4?") == tok("What is 3 + 4?").input_ids

    model, tok = load(folders["qwen2_pad_eos"])  # Qwen2.5-Math base: pad == eos
    assert tok.pad_token_id == tok.eos_token_id == end
    rule = TokenRule.from_tokenizer(tok, model.generation_config)
    assert rule == TokenRule(pad_id=end, stop_ids=frozenset({im_end, end}), eos_id=end)

    model, tok = load(folders["qwen2_no_list"])  # no stop list: the tokenizer's eos alone
    rule = TokenRule.from_tokenizer(tok, model.generation_config)
    assert rule.stop_ids == frozenset({im_end})


def test_char_tokenizer_families_keep_their_bos(folders):
    model, tok = load(folders["llama"])
    rule = TokenRule.from_tokenizer(tok, model.generation_config)
    assert rule.encode_prompt(tok, "1+2=")[0] == tok.bos_token_id
    assert rule.stop_ids == frozenset({tok.eos_token_id}) and rule.pad_id == tok.pad_token_id


# Where drgrpo disagrees with plain transformers: case -> the exact failure (xfail, strict).
SOFTCAP = (
    "drgrpo applies get_output_embeddings() to the decoder's hidden states itself "
    "(sequence_logprobs' chunked head, HFRolloutEngine's head(hidden)), skipping the "
    "final_logit_softcapping (30.0) that Gemma2ForCausalLM.forward applies to the logits: "
    "log-probs off by up to 0.038 (sampler_logprobs too); greedy tokens agree, tanh is monotone"
)
LOGPROB_BREAKS: dict[str, str] = {}  # gemma2 softcapping: fixed (models/hf_compat.output_head)
CASES = ["qwen2", "qwen2_pad_eos", *FAMILIES]


def _rollouts(model, tok, fast_decode=True):
    rule = TokenRule.from_tokenizer(tok, model.generation_config)
    prompt_ids = rule.encode_prompts(tok, PROMPTS)
    engine = HFRolloutEngine(model, rule.stop_ids, rule.pad_id, fast_decode=fast_decode)
    return rule, prompt_ids, engine.generate(prompt_ids, max_new_tokens=MAX_NEW, temperature=0.0)


def _params(cases, breaks=None):
    breaks = breaks or {}
    return [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=breaks[c]))
        if c in breaks
        else c
        for c in cases
    ]


@pytest.mark.parametrize("case", _params(CASES))
@pytest.mark.parametrize("fast_decode", [True, False])
def test_greedy_rollouts_equal_transformers_generate(folders, case, fast_decode):
    model, tok = load(folders[case])
    rule, prompt_ids, rollouts = _rollouts(model, tok, fast_decode)
    stops = sorted(rule.stop_ids)
    # A pad that is not a stop id is never sampled by drgrpo; suppress it in generate too.
    suppress = None if rule.pad_id in rule.stop_ids else [rule.pad_id]
    for i, ids in enumerate(prompt_ids):
        out = model.generate(
            torch.tensor([ids]),
            attention_mask=torch.ones(1, len(ids), dtype=torch.long),
            do_sample=False,
            max_new_tokens=MAX_NEW,
            eos_token_id=stops,
            pad_token_id=rule.pad_id,
            suppress_tokens=suppress,
        )[0, len(ids) :].tolist()
        n = int(rollouts.response_mask[i].sum())
        assert rollouts.response_ids[i, :n].tolist() == out, (case, i)
        assert rollouts.finish_reason[i] == ("stop" if out[-1] in rule.stop_ids else "length")


@pytest.mark.parametrize("case", _params(CASES, LOGPROB_BREAKS))
def test_logprobs_equal_transformers_forward(folders, case):
    model, tok = load(folders[case])
    _, prompt_ids, rollouts = _rollouts(model, tok)
    ids = torch.cat([rollouts.prompt_ids, rollouts.response_ids], dim=1)
    mask = torch.cat([rollouts.prompt_mask, rollouts.response_mask], dim=1)
    p = rollouts.prompt_ids.shape[1]
    with torch.no_grad():
        logprobs, _ = sequence_logprobs(model, ids, mask, p)
    for i, prompt in enumerate(prompt_ids):
        n = int(rollouts.response_mask[i].sum())
        response = rollouts.response_ids[i, :n]
        with torch.no_grad():
            logits = model(torch.tensor([prompt + response.tolist()])).logits[0].float()
        # Row i's token t is predicted at position len(prompt) - 1 + t.
        reference = logits[len(prompt) - 1 : -1].log_softmax(-1).gather(-1, response[:, None])[:, 0]
        torch.testing.assert_close(rollouts.sampler_logprobs[i, :n], reference, rtol=0, atol=1e-5)
        torch.testing.assert_close(logprobs[i, :n], reference, rtol=0, atol=1e-5)
        assert (logprobs[i, n:] == 0).all()


@pytest.mark.parametrize("case", ["qwen2", "qwen2_pad_eos"])
def test_some_greedy_rows_stop_and_some_run_out(folders, case):
    """The agreement tests above mean something only if rows stop on each id of the stop set;
    with pad == eos, the row that sampled the pad id stopped and keeps it in its mask."""
    model, tok = load(folders[case])
    rule, _, rollouts = _rollouts(model, tok)
    lengths = rollouts.response_mask.sum(dim=1).tolist()
    ends = {
        int(rollouts.response_ids[i, n - 1])
        for i, n in enumerate(lengths)
        if rollouts.finish_reason[i] == "stop"
    }
    assert ends == rule.stop_ids  # rows stop on <|im_end|> and on <|endoftext|>
    assert "length" in rollouts.finish_reason
