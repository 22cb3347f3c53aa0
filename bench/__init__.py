"""Benchmarks: retrieval quality (BEIR) and GPU throughput of the rag-serve servers (DESIGN §7)."""
