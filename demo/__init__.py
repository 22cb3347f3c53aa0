"""The `make demo` job: a real embedding server, a LlamaIndex index over the sample corpus, ranked hits."""
