"""The character-level tokenizer of the built-in tiny policy.

One token per printable ASCII character (plus newline), and four specials. It is a plain
`PreTrainedTokenizerFast` built with the `tokenizers` library, so it saves with
`save_pretrained` and loads back with `AutoTokenizer.from_pretrained`. Encoding a text adds
`<bos>` in front (disable with `add_special_tokens=False`); other characters map to `<unk>`.
"""

from __future__ import annotations

import string

from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
CHARS = tuple(c for c in string.printable if c not in "\t\r\x0b\x0c")  # 95 printable + "\n"


def build_char_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh character-level tokenizer: ids 0-3 are <pad>, <bos>, <eos>, <unk>."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token=PAD, bos_token=BOS, eos_token=EOS, unk_token=UNK,
        padding_side="right", model_max_length=1024)
