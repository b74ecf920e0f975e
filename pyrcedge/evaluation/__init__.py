"""Evaluation: streaming perplexity through a budgeted cache, QA and needle retrieval, speed
against stock llama-cpp-python, and the data they read (docs/RESULTS.md)."""
