"""Finding code: BM25, embeddings, vector stores (Qdrant Edge / server), the unit index, the context pack and the prompt."""
