"""Chat structure: the template's tokens of the turns still cached, and the system prompt, are
never evicted.

A chat template wraps every turn in control tokens and a role header (ChatML:
`<|im_start|>user\\n ... <|im_end|>\\n`). Evicting them leaves turns that run into each other, or
an answer that does not know whose words it is reading; llama.cpp's maintainers turned context
shift off by default for that reason. So a turn that keeps any of its words in the cache keeps
its control tokens and role header too, and the system prompt (the first turn, when its role is
"system") stays whole, up to a share of the budget. A turn whose words are all evicted releases
its structure at the next eviction. Text without control tokens (a plain completion) has no
structure: nothing changes for it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

# the tokens after a control token that belong to its header: the role and its newline
HEADER_TOKENS = 3
# the system prompt is held whole only while it takes at most this share of the budget
SYSTEM_SHARE = 0.25


def header_mask(control: npt.NDArray[np.bool_], newline: npt.NDArray[np.bool_],
                header: int = HEADER_TOKENS) -> npt.NDArray[np.bool_]:
    """Structural tokens: each control token, and up to `header` tokens after it through the
    first one that holds a newline (ChatML's role line; Llama 3's header and blank line)."""
    out = control.copy()
    n = len(control)
    for i in np.flatnonzero(control):
        for j in range(i + 1, min(n, i + 1 + header)):
            if control[j]:
                break
            out[j] = True
            if newline[j]:
                break
    return out


def protected(tokens: npt.NDArray[np.int32], control: npt.NDArray[np.bool_],
              newline: npt.NDArray[np.bool_], cached: npt.NDArray[np.bool_],
              system: npt.NDArray[np.bool_], system_limit: int) -> npt.NDArray[np.bool_]:
    """Which history tokens eviction must keep (all arrays over the history).

    Turns begin at the first control token of the history that a header follows (a token that
    is not one: ChatML's <|im_start|>, also SmolLM2's BOS; Llama 3's <|start_header_id|>, after
    its BOS), and at every later occurrence of the same token. `system[i]`: token i's piece is
    the word "system" (the first turn is the system prompt when its header holds it)."""
    starts = np.flatnonzero(control[:-1] & ~control[1:])
    if not len(starts):
        return np.zeros(len(tokens), bool)
    opener = tokens[int(starts[0])]
    turn = np.cumsum(tokens == opener)            # 0 before the first turn
    structural = header_mask(control, newline)
    content = ~structural & (turn > 0)
    live = np.zeros(int(turn[-1]) + 1, bool)
    live[turn[content & cached]] = True
    keep = structural & live[turn] & (turn > 0)
    first = turn == 1
    if (system & structural & first).any() and int(first.sum()) <= system_limit:
        keep |= first
    return keep
