import pytest
import torch

from drgrpo.models import MODEL_SIZES, build_model, load_policy, save_policy


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_sizes_have_the_documented_shapes(tokenizer):
    tiny = build_model("tiny", len(tokenizer))
    # 4 layers x (attention 4*128^2 + MLP 3*128*512) + tied embedding 100*128 + norms = 1.06M.
    assert 1.0e6 < n_params(tiny) < 1.1e6
    assert 9e6 < n_params(build_model("small", len(tokenizer))) < 11e6
    cfg = tiny.config
    assert cfg.tie_word_embeddings and cfg.max_position_embeddings == 512
    assert (cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id) == (0, 1, 2)
    assert cfg.vocab_size == len(tokenizer)
    assert tiny.lm_head.weight is tiny.model.embed_tokens.weight


def test_wide_vocab_keeps_qwen_vocab_width(tokenizer):
    assert MODEL_SIZES["wide-vocab"]["hidden_size"] == 256
    with torch.device("meta"):  # shapes only: no 155 MB allocation in a unit test
        model = build_model("wide-vocab", len(tokenizer))
    assert model.config.vocab_size == 151936
    assert model.lm_head.weight.shape == (151936, 256)


def test_same_seed_same_weights_and_global_rng_untouched(tokenizer):
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = build_model("tiny", len(tokenizer), seed=7, num_hidden_layers=1)
    assert torch.equal(torch.rand(3), expected_next)
    b = build_model("tiny", len(tokenizer), seed=7, num_hidden_layers=1)
    c = build_model("tiny", len(tokenizer), seed=8, num_hidden_layers=1)
    pairs = list(zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert all(torch.equal(x, y) for x, y in pairs)
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_overrides_and_unknown_size(tokenizer):
    model = build_model("tiny", len(tokenizer), num_hidden_layers=1, intermediate_size=64)
    assert len(model.model.layers) == 1 and model.config.intermediate_size == 64
    with pytest.raises(ValueError, match="tiny.*small.*wide-vocab"):
        build_model("huge", len(tokenizer))


def test_save_and_load_round_trip(tokenizer, tmp_path):
    model = build_model("tiny", len(tokenizer), seed=3, num_hidden_layers=1)
    save_policy(model, tokenizer, tmp_path / "policy")
    assert list((tmp_path / "policy").glob("*.safetensors"))
    loaded, loaded_tok = load_policy(tmp_path / "policy")
    ids = torch.tensor([[1, 20, 15, 21]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    assert loaded_tok.encode("1+2", add_special_tokens=False) == tokenizer.encode(
        "1+2", add_special_tokens=False
    )
    half, _ = load_policy(tmp_path / "policy", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16


def test_load_policy_errors_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_policy(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_policy(tmp_path)
