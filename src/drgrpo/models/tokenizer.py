"""A character-level tokenizer built locally, so that nothing is fetched from the Hub.

One id per character keeps arithmetic legible (each digit is its own token) and makes
"response length in tokens" mean "response length in characters".
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(len(SPECIAL_TOKENS))
CHARACTERS = tuple(chr(c) for c in range(32, 127)) + ("\n",)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Character-level tokenizer: pad=0, bos=1, eos=2, unk=3, then printable ASCII and "\\n".

    Its own convention (a post-processor) puts BOS before every encoded text, so that
    `tokenizer(prompt)` in plain transformers gives the ids drgrpo trains on
    (`drgrpo.rollout.prompts.TokenRule`); it never appends EOS. Text is always characters:
    "<eos>" typed in a prompt is five tokens, never the EOS id.
    """
    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    # [\s\S] is any character, "\n" included (Oniguruma's "." skips newlines).
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    # Fuse joins the pieces with no separator; the default WordLevel decoding joins with " ".
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, BOS_ID)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        split_special_tokens=True,
    )
