"""pyrcedge: run llama.cpp models inside a fixed KV cache memory budget.

`import pyrcedge` loads llama_cpp, whose libllama must be the patched build that
scripts/setup.sh installs (the llama-cpp-python 0.3.36+rcedge.KEY wheel); on a stock one it
raises NativeLibraryError saying how to install it. pyrcedge.native_version() tells which native
API it carries.
docs/layers.md maps the package: native -> cache -> features -> llama -> apps -> cli.
"""

from __future__ import annotations

from importlib import metadata

from .assets import models
from .cache import budget, policies
from .cache.engine import EvictionEvent, KVStats
from .cache.policies import POLICIES, Policy
from .cache.view import CacheView
from .errors import (
    AttributionError,
    BudgetError,
    ContextOverflowError,
    GenerationInputError,
    ModelFetchError,
    ModelLoadError,
    NativeLibraryError,
    PolicyError,
    PyrcedgeError,
    ScoringError,
    ScoringInputError,
    SessionError,
)
from .features import attribution, session
from .features.probe import CATALYST, Probe
from .features.recall import Recall
from .features.session import SessionState
from .llama import Llama
from .native import rcstat
from .native import stats as scoring
from .native.binding import lib as _native_lib
from .native.binding import version as native_version

# a stock libllama stops the import here, with what to install
_native_lib()

try:
    __version__ = metadata.version("pyrcedge")
except metadata.PackageNotFoundError:  # imported from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "CATALYST",
    "POLICIES",
    "AttributionError",
    "BudgetError",
    "CacheView",
    "ContextOverflowError",
    "GenerationInputError",
    "EvictionEvent",
    "KVStats",
    "Llama",
    "Policy",
    "Probe",
    "Recall",
    "PolicyError",
    "ModelFetchError",
    "ModelLoadError",
    "NativeLibraryError",
    "PyrcedgeError",
    "ScoringError",
    "ScoringInputError",
    "SessionError",
    "SessionState",
    "__version__",
    "attribution",
    "budget",
    "models",
    "native_version",
    "policies",
    "rcstat",
    "scoring",
    "session",
]
