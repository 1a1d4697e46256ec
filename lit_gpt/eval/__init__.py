"""Evaluation of litscale checkpoints (see docs/eval.md).

Modules: ``scoring`` (log-likelihoods, sliding windows, incremental generation), ``harness`` (the lm-eval model
``ArchScale``; the only module that imports lm_eval), ``phonebook``, ``perplexity``, ``summary``, ``common``.
Importing this package imports nothing heavy.
"""
