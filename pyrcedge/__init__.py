"""pyrcedge: run llama.cpp models inside a fixed KV cache memory budget.

`import pyrcedge` loads llama_cpp, whose libllama must be the patched build that
scripts/setup.sh installs; pyrcedge.native_version() tells which native API it carries.
"""

from __future__ import annotations

from ._native import version as native_version
from .errors import (
    BudgetError,
    ContextOverflowError,
    ModelFetchError,
    ModelLoadError,
    NativeLibraryError,
    PolicyError,
    PyrcedgeError,
    SessionError,
)
from .kvcache import EvictionEvent, KVStats
from .llama import Llama
from .policies import POLICIES, CacheView, Policy
from .session import SessionState

__version__ = "0.1.0"

__all__ = [
    "POLICIES",
    "BudgetError",
    "CacheView",
    "ContextOverflowError",
    "EvictionEvent",
    "KVStats",
    "Llama",
    "Policy",
    "PolicyError",
    "ModelFetchError",
    "ModelLoadError",
    "NativeLibraryError",
    "PyrcedgeError",
    "SessionError",
    "SessionState",
    "__version__",
    "native_version",
]
