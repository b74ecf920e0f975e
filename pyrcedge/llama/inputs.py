"""Checks of what a generation call hands to llama.cpp that it would crash on.

llama_cpp.Llama adds a grammar's sampler without checking that llama.cpp could parse it (a
grammar that does not parse gives a NULL sampler, and the process segfaults), and a logit_bias
or a prompt of token ids is indexed without a bound. pyrcedge.Llama checks them before
generating; `pyrcedge serve` checks them before a request is queued (a 400, not a dead server).
"""

from __future__ import annotations

import math
from typing import Any, Mapping

import llama_cpp

from ..errors import GenerationInputError

# llama.cpp's grammar parser recurses once per nested group: 100000 levels overflow its stack
MAX_GRAMMAR_NESTING = 1000


def grammar_text(grammar: Any) -> str | None:
    """The GBNF text of a llama_cpp.LlamaGrammar or a string (None for None)."""
    if grammar is None:
        return None
    text = getattr(grammar, "_grammar", grammar)
    if not isinstance(text, str):
        raise GenerationInputError(f"a grammar is GBNF text or a llama_cpp.LlamaGrammar, got "
                                   f"{type(grammar).__name__}")
    return text


def nesting_depth(text: str) -> int:
    """The deepest nesting of ( ) groups outside "literals", [classes] and # comments."""
    depth = deepest = 0
    quote: str | None = None
    escaped = False
    for ch in text:
        if quote is not None:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "\"[#":
            quote = {'"': '"', "[": "]", "#": "\n"}[ch]
        elif ch == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif ch == ")":
            depth -= 1
    return deepest


def check_grammar(vocab: Any, grammar: Any, root: str = "root") -> None:
    """GenerationInputError unless llama.cpp parses `grammar` (text or LlamaGrammar) into a
    sampler for `vocab` (a llama_vocab pointer)."""
    text = grammar_text(grammar)
    if not text:
        return      # no grammar: llama.cpp samples freely
    if nesting_depth(text) > MAX_GRAMMAR_NESTING:
        raise GenerationInputError(f"the grammar nests groups deeper than "
                                   f"{MAX_GRAMMAR_NESTING} levels")
    root = getattr(grammar, "_root", root)
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, text.encode("utf-8"),
                                                   root.encode("utf-8"))
    if not sampler:
        raise GenerationInputError("the grammar does not parse (GBNF: llama.cpp's parser "
                                   f"refused it; its rule {root!r} must exist, every rule it "
                                   "uses be defined, and none be left-recursive)")
    llama_cpp.llama_sampler_free(sampler)


def check_token_ids(ids: Any, n_vocab: int, what: str) -> None:
    """GenerationInputError unless every id is an integer in [0, n_vocab)."""
    for t in ids:
        try:
            ok = not isinstance(t, bool) and int(t) == t and 0 <= int(t) < n_vocab
        except (TypeError, ValueError, OverflowError):
            ok = False
        if not ok:
            raise GenerationInputError(f"{what} holds token id {t!r}: token ids are integers in "
                                       f"[0, {n_vocab})")


def check_logit_bias(bias: Mapping[Any, Any] | None, n_vocab: int) -> None:
    """GenerationInputError unless bias maps token ids (ints or their decimal strings) in
    [0, n_vocab) to finite numbers (anything float() makes one of, as llama_cpp takes it)."""
    if bias is None:
        return
    if not isinstance(bias, Mapping):
        raise GenerationInputError("logit_bias maps token ids to numbers")
    keys = []
    for k, v in bias.items():
        try:
            keys.append(int(k))
        except (TypeError, ValueError):
            raise GenerationInputError(f"logit_bias holds key {k!r}, not a token id") from None
        try:
            finite = math.isfinite(float(v))    # what llama_cpp adds to the logit
        except (TypeError, ValueError):
            finite = False
        if not finite:
            raise GenerationInputError(f"logit_bias for token {k} must be a finite number, "
                                       f"got {v!r}")
    check_token_ids(keys, n_vocab, "logit_bias")


def check_prompt_tokens(prompt: Any, n_vocab: int) -> None:
    """A prompt given as token ids (a list of ints) within the vocabulary."""
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], str):
        check_token_ids(prompt, n_vocab, "the prompt")
