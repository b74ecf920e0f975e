"""Layer 4, the drop-in: pyrcedge.Llama (drop_in), llama_cpp.Llama inside a KV budget, and its
validated settings (settings). Imports the layers below it: native, cache, features."""

from .drop_in import LOGICAL_CONTEXT, Llama
from .settings import BudgetSettings

__all__ = ["LOGICAL_CONTEXT", "BudgetSettings", "Llama"]
