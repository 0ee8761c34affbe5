from hypothesis import given, settings
from hypothesis import strategies as st
from transformers import AutoTokenizer

from drgrpo.models import BOS_ID, EOS_ID, PAD_ID, UNK_ID

ALPHABET = "".join(chr(c) for c in range(32, 127)) + "\n"


def test_special_ids_are_fixed_and_distinct(tokenizer):
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id) == (PAD_ID, BOS_ID) == (0, 1)
    assert (tokenizer.eos_token_id, tokenizer.unk_token_id) == (EOS_ID, UNK_ID) == (2, 3)
    assert tokenizer.pad_token_id != tokenizer.eos_token_id
    # 4 specials + 95 printable ASCII + "\n".
    assert len(tokenizer) == 100


def test_one_id_per_character_and_exact_decode(tokenizer):
    ids = tokenizer.encode("12+3", add_special_tokens=False)
    assert len(ids) == 4 and len(set(ids)) == 4
    assert tokenizer.decode(ids) == "12+3"
    for text in [" a  b ", "x\n\ny\n", "\n", "12+34+5=\n46\nanswer: 51", ""]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert len(ids) == len(text)
        assert tokenizer.decode(ids) == text


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=ALPHABET, max_size=40))
def test_round_trip_any_ascii_text(tokenizer, text):
    ids = tokenizer.encode(text, add_special_tokens=False)
    assert len(ids) == len(text)
    assert UNK_ID not in ids
    assert tokenizer.decode(ids) == text


def test_bos_by_its_own_convention_and_never_eos(tokenizer, tmp_path):
    """`tokenizer(prompt)` in plain transformers gives the ids drgrpo trains on: BOS + text."""
    plain = tokenizer.encode("7+8=", add_special_tokens=False)
    assert tokenizer("7+8=")["input_ids"] == [BOS_ID, *plain]
    assert EOS_ID not in tokenizer("7+8=")["input_ids"]
    tokenizer.save_pretrained(tmp_path)  # the exported tokenizer keeps the convention
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path)("7+8=")["input_ids"] == [BOS_ID, *plain]


def test_non_ascii_is_unk_and_special_tokens_decode_by_name(tokenizer):
    assert tokenizer.encode("é1", add_special_tokens=False)[0] == UNK_ID
    assert tokenizer.decode([BOS_ID, 20, EOS_ID]) == "<bos>0<eos>"
    assert tokenizer.decode([BOS_ID, 20, EOS_ID, PAD_ID], skip_special_tokens=True) == "0"


def test_special_token_text_is_plain_characters(tokenizer):
    # A prompt cannot smuggle in a stop token: specials enter only as explicit ids.
    ids = tokenizer.encode("1<eos>", add_special_tokens=False)
    assert len(ids) == 6 and EOS_ID not in ids
    assert tokenizer.decode(ids) == "1<eos>"


def test_save_and_reload_keeps_ids_and_decoding(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    text = "12+34+5=\nanswer: 51"
    assert reloaded.encode(text, add_special_tokens=False) == tokenizer.encode(
        text, add_special_tokens=False
    )
    assert reloaded.decode(reloaded.encode(text, add_special_tokens=False)) == text
    assert (reloaded.pad_token_id, reloaded.bos_token_id, reloaded.eos_token_id) == (0, 1, 2)
    assert len(reloaded) == len(tokenizer)
    assert EOS_ID not in reloaded.encode("<eos>", add_special_tokens=False)
