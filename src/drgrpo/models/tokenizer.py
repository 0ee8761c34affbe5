"""A character-level tokenizer built locally, so that nothing is fetched from the Hub.

One id per character keeps arithmetic legible (each digit is its own token) and makes
"response length in tokens" mean "response length in characters".
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))
CHARACTERS = tuple(chr(c) for c in range(32, 127)) + ("\n",)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: pad=0, bos=1, eos=2, unk=3, then printable ASCII and "\\n".

    It never inserts BOS or EOS by itself: callers add BOS before prompts and EOS after
    responses, so what the model sees is always spelled out at the call site. Text is always
    characters: "<eos>" typed in a prompt is five tokens, never the EOS id.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # [\s\S] is any character, "\n" included (Oniguruma's "." skips newlines).
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Fuse joins the pieces with no separator; the default WordLevel decoding joins with " ".
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        split_special_tokens=True,
    )
