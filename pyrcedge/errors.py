"""Exceptions pyrcedge raises. Each also derives from the built-in type a llama-cpp-python user
already catches for the same failure (ValueError for bad input, RuntimeError for the rest)."""

from __future__ import annotations


class PyrcedgeError(Exception):
    """Base of every error pyrcedge raises on purpose."""


class NativeLibraryError(PyrcedgeError, RuntimeError):
    """The libllama that llama_cpp loaded is not a pyrcedge build, or lacks a symbol."""


class ModelLoadError(PyrcedgeError, ValueError):
    """A model file is missing, unreadable or not a usable GGUF."""


class ModelFetchError(PyrcedgeError, RuntimeError):
    """A model could not be fetched or did not match its pinned sha256."""


class ContextOverflowError(PyrcedgeError, ValueError):
    """More tokens were asked for than the KV cache can hold."""


class BudgetError(PyrcedgeError, ValueError):
    """A KV budget, eviction or context setting that cannot work (too small, malformed,
    unknown, or beyond what llama.cpp's C types and limits can take)."""


class GenerationInputError(PyrcedgeError, ValueError):
    """An argument to a generation call that llama.cpp cannot take: a grammar that does not
    parse, a token id outside the vocabulary (in logit_bias or a prompt of token ids)."""


class PolicyError(PyrcedgeError, RuntimeError):
    """An eviction policy failed or returned an invalid choice; the cache was left unchanged."""


class SessionError(PyrcedgeError, ValueError):
    """A session cannot be saved, or a file cannot be restored (corrupt, truncated, or saved for
    another model, budget or cache type). Nothing was loaded."""


class ScoringError(PyrcedgeError, RuntimeError):
    """Scoring cannot do what was asked in the context's current state (e.g. it is off)."""


class ScoringInputError(PyrcedgeError, ValueError):
    """An argument to the statistics API is out of range: alpha, a layer index, a cell index."""


class AttributionError(PyrcedgeError, ValueError):
    """Attribution was asked for what cannot be attributed (no answer, spans outside it...)."""


class EvaluationError(PyrcedgeError, ValueError):
    """Bad input to an evaluation (too few tokens, a bad budget or chunk size)."""


class DataFetchError(PyrcedgeError, RuntimeError):
    """An evaluation data set could not be fetched or did not match its pinned sha256."""
