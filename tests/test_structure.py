"""Chat structure (pyrcedge.features.structure): a budgeted chat keeps the system prompt and the
template tokens of the turns it still holds words of; text without control tokens is unchanged."""

from __future__ import annotations

import numpy as np
from test_budgeted import PROSE, make

from pyrcedge.features import structure
from pyrcedge.llama.drop_in import CONTROL


def test_headers_are_control_tokens_and_their_role_line():
    control = np.array([1, 0, 0, 0, 0, 1, 0, 1, 0, 0], bool)
    newline = np.array([0, 0, 1, 0, 0, 0, 1, 0, 0, 0], bool)
    assert structure.header_mask(control, newline).tolist() == [
        True, True, True, False, False, True, True, True, True, True]


def test_a_turn_keeps_its_structure_while_any_of_its_words_is_cached():
    # <s> sys \n w w </s> \n <s> usr \n w w </s> \n <s> usr \n w </s> \n
    tokens = np.array([1, 7, 9, 20, 21, 2, 9, 1, 8, 9, 22, 23, 2, 9, 1, 8, 9, 24, 2, 9])
    control = np.isin(tokens, [1, 2])
    newline = tokens == 9
    system = tokens == 7
    cached = np.ones(len(tokens), bool)
    cached[[10, 11]] = False                       # the second turn's words are gone
    keep = structure.protected(tokens, control, newline, cached, system, 8)
    assert keep[:7].all()                          # the system prompt, whole
    assert not keep[7:14].any()                    # the turn with no words left: released
    assert keep[[14, 15, 16, 18, 19]].all() and not keep[17]   # words stay evictable
    assert not structure.protected(tokens, control, newline, cached, system, 4)[3:5].any()


def test_text_without_control_tokens_has_no_structure():
    tokens = np.arange(10)
    none = np.zeros(10, bool)
    assert not structure.protected(tokens, none, none, ~none, none, 8).any()


def chat(llm, turns: int) -> None:
    messages = [{"role": "system", "content": "You are a terse assistant who answers in French."}]
    for k in range(turns):
        messages.append({"role": "user", "content": f"Summarize note {k}: {PROSE * 2}"})
        r = llm.create_chat_completion(messages=messages, max_tokens=8, temperature=0.0)
        messages.append({"role": "assistant", "content": r["choices"][0]["message"]["content"]})


def test_a_budgeted_chat_keeps_the_system_prompt_and_the_headers_of_its_turns(default_model):
    llm = make(default_model, kv_budget=160, chat_structure=True, recall=None)
    chat(llm, 6)
    kv = llm.kv_cache
    assert kv.evictions > 0
    history = llm.input_ids[:llm.n_tokens]
    text = "".join(llm.token_piece(int(t)).decode("utf-8", "replace") for t in history[kv.cached])
    assert text.startswith("<|im_start|>system\nYou are a terse assistant who answers in French."
                           "<|im_end|>")
    control = np.flatnonzero(llm._token_kinds(history)[:, CONTROL])
    kept = set(kv.cached.tolist())
    for a, b in zip(control[::2], control[1::2]):      # each turn's <|im_start|> .. <|im_end|>
        words = set(range(a + 3, b)) & kept
        if words:
            assert {a, a + 1, a + 2, b} <= kept         # its opener, role line and closer


def test_chat_structure_is_off_unless_asked(default_model):
    llm = make(default_model, kv_budget=160, recall=None)
    chat(llm, 6)
    kv = llm.kv_cache
    system_turn = set(range(4, 16))        # past the sink: the system prompt's words
    assert not system_turn <= set(kv.cached.tolist())
