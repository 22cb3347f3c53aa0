"""Benchmarks: retrieval quality (BEIR) and GPU throughput of the rag-serve servers.

No benchmark runs in ``make test``: they need a GPU or data read in place (e.g. a BEIR folder outside the
repository); tests build tiny random-weight models instead, and the GPU benchmarks build the same
architectures at their real shapes. Commands and results: ``docs/benchmarks.md``.
"""
