"""The special tokens llama.cpp will add to a prompt, checked once the model is loaded.

llama.cpp resolves a vocabulary's BOS, EOS and SEP ids as it loads (the file's id when it lies
inside the vocabulary, else the tokenizer model's default, which is none for some models) and
whether tokenizing adds them (the file's add_*_token keys over defaults that depend on the
tokenizer model and pre-tokenizer; Gemma 4's forces BOS). Tokenizing with special tokens then
asserts that each token it adds exists: a file whose BOS id is out of range on a model without a
default BOS loads, and aborts the process at the first Llama.tokenize(text) (add_bos=True). The resolved values are read back
from llama.cpp rather than predicted from the metadata, so the check is what llama.cpp will do.
"""

from __future__ import annotations

from typing import Any

import llama_cpp

from ..errors import ModelLoadError

LLAMA_TOKEN_NULL = -1
# the metadata keys of the special tokens (GGUF spells the separator's so)
SPECIAL_TOKEN_KEYS = {"BOS": "bos_token_id", "EOS": "eos_token_id", "SEP": "seperator_token_id"}
# llama_vocab_type: which tokenizers assert on the special tokens they add
VOCAB_SPM, VOCAB_BPE, VOCAB_WPM, VOCAB_UGM = 1, 2, 3, 4


def missing_special_token(model: Any) -> str | None:
    """What llama.cpp would add to a prompt but has no token for ("BOS", "EOS", "SEP"), else
    None. model: a llama_model pointer."""
    vocab = llama_cpp.llama_model_get_vocab(model)
    kind = llama_cpp.llama_vocab_type(vocab)
    if kind == VOCAB_WPM:          # BERT's adds BOS and SEP whenever special tokens are asked for
        added = {"BOS": llama_cpp.llama_vocab_bos(vocab), "SEP": llama_cpp.llama_vocab_sep(vocab)}
    elif kind in (VOCAB_SPM, VOCAB_BPE, VOCAB_UGM):
        added = {}
        if llama_cpp.llama_vocab_get_add_bos(vocab):
            added["BOS"] = llama_cpp.llama_vocab_bos(vocab)
        if llama_cpp.llama_vocab_get_add_eos(vocab):
            added["EOS"] = llama_cpp.llama_vocab_eos(vocab)
    else:
        return None
    return next((name for name, token in added.items() if token == LLAMA_TOKEN_NULL), None)


def check_special_tokens(model: Any, path: str) -> None:
    """ModelLoadError when the loaded model's tokenizer adds a special token it lacks."""
    missing = missing_special_token(model)
    if missing is not None:
        raise ModelLoadError(f"{path}: its tokenizer adds the special token {missing} to every "
                             f"prompt but has none (tokenizer.ggml.{SPECIAL_TOKEN_KEYS[missing]} "
                             "is missing or outside the vocabulary, and the tokenizer has no "
                             "default); llama.cpp would abort the process whenever it tokenizes "
                             "with special tokens (Llama.tokenize's default)")
