"""Finding code: BM25 over files, the unit index (embeddings in Qdrant) and what prediction builds from it.

    bm25          the code-aware word split, BM25Index (incremental BM25), FileSearch (BM25 over the files
                  at one commit, moved commit by commit: the ranker's code search)
    index_config  IndexConfig: the `index` section (the index stage's Config), load_index_config
    units         IndexUnit and units_of_file: what a file version splits into, one index point each
    embedding     Embedder (the dense model: ONNX Runtime or torch; token counts) and FileEmbeddings (file
                  vectors for the ranker)
    onnx_model    the model exported to ONNX once, int8-quantized, checked against torch, cached by digest
    sparse        BM25 as Qdrant sparse vectors (term-frequency part; Qdrant applies the IDF)
    stores        the stores a unit index lives in: EdgeStore (Qdrant Edge), ClientStore (qdrant-client)
    unit_index    UnitIndex: build, update incrementally and search the units of a tree; tree_units
    context       build_context: the context pack of current code for a predicted change
    prompt        render_prompt: the prompt for a code-writing model
    retriever     Retriever: context and prompt per request, for predict.py and serve.py
"""
