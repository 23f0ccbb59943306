"""Tokenizers for models trained from scratch, built from the data without any download."""

import re
from collections import Counter

from transformers import CLIPTokenizer

# Characters of the character-level tokenizer (no download): enough for English captions and prompts.
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789.,'!?:;-"
_SPECIALS = ["<|startoftext|>", "<|endoftext|>"]


def char_tokenizer(max_length: int = 64) -> CLIPTokenizer:
    """A character-level CLIP tokenizer (no BPE merges: each character with and without CLIP's end-of-word suffix),
    for DTP-CLIP models trained from scratch. Unknown characters map to `<|endoftext|>`."""
    tokens = _SPECIALS + list(_CHARS) + [c + "</w>" for c in _CHARS]
    return CLIPTokenizer(vocab={t: i for i, t in enumerate(tokens)}, merges=[], model_max_length=max_length)


_WORD = re.compile(r"\w+|[^\w\s]")


def word_level_tokenizer(captions: list[str], max_vocab: int = 30000):
    """A BERT WordPiece tokenizer whose vocabulary is the words of `captions` (most frequent first, at most
    `max_vocab`), with BLIP's special tokens and `[DEC]` as `bos_token`: for models trained from scratch."""
    from transformers import BertTokenizer

    counts = Counter(word for caption in captions for word in _WORD.findall(caption.lower()))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = [word for word, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][: max_vocab - len(specials)]
    tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(specials + words)})
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    return tokenizer
