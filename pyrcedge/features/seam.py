"""What the features need of a budgeted Llama: the seam pyrcedge.Llama offers them.

The features (sessions, attribution, explain) are functions over this protocol rather than
methods of the class, so they sit below pyrcedge.Llama, which hands its methods over to them,
and imports point down (docs/layers.md).
"""

from __future__ import annotations

from typing import Any, ContextManager, Protocol, Sequence

import numpy as np
import numpy.typing as npt

from ..cache.engine import BudgetedKV


class BudgetedModel(Protocol):
    @property
    def ctx(self) -> Any: ...             # the llama_context (ctypes pointer)

    input_ids: npt.NDArray[np.intc]       # the token history (its first n_tokens)
    n_tokens: int
    answer_start: int | None              # history index where the last answer began
    statistics: bool                      # whether the kernels keep attention statistics
    scores: npt.NDArray[np.single]        # logits of every token (logits_all only)
    model_path: str
    context_params: Any                   # llama_context_params (cache types)
    _model: Any                           # llama_cpp's LlamaModel
    _n_vocab: int
    _logits_all: bool
    _seed: int
    _requires_eval: bool

    @property
    def kv_cache(self) -> BudgetedKV: ...

    def reset(self) -> None: ...

    def decode_last(self, token: int, pos: int) -> None: ...

    def token_offsets(self, tokens: Sequence[int]) -> tuple[str, npt.NDArray[np.int64]]: ...

    def detokenize(self, tokens: list[int], prev_tokens: Any = None,
                   special: bool = False) -> bytes: ...

    def statistics_window(self, alpha: float,
                          reset_a2sf_at_answer: bool = True) -> ContextManager[None]: ...

    def create_chat_completion(self, *args: Any, **kwargs: Any) -> Any: ...
