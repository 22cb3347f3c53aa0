"""Adapters that plug rag-plugins servers into LightRAG and RAG-Anything."""
