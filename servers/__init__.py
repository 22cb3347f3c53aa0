"""Local model servers of rag-plugins: one process per model, pinned to one device (``rag-serve``)."""
