"""Surefoot: fault-tolerant, event-driven LLM inference on Knative.

This package is the thin command line: it builds settings from flags and ``SUREFOOT_*``
environment variables and hands them to the packages that do the work.
"""

__version__ = "0.1.0"
