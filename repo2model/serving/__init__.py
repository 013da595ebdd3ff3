"""Answering: given recent history and a task, the predicted change; predict.py prints it, serve.py answers it over HTTP.

    history     the recent history (Commit, [Chunk]) from a repository, from commits.json + chunks.jsonl, or from a
                caller's records
    settings    the `predict` config section (PredictionConfig), per-request options, the flags the tools share
    prediction  the typed Prediction (files, change types, symbols, candidates, context...) and its JSON, to_json()
    generation  generated text parsed into candidates; files ranked across them by weighted votes, and merged
                after the likelihood's scored files
    predictor   the Predictor: a model loaded once; the prompt, generation, the likelihood of candidate files, the
                learned ranker and the code context put together into a Prediction; the CandidatePool it scores
    backends    the language model behind the Predictor: torch (the model folder) or llama.cpp (the exported GGUF,
                predict.backend: llama_cpp)
    service     the HTTP service serve.py runs: Service (the requests), Handler (the endpoints), make_server
    reload      a new model without a restart (ModelReloader) and POST /update's pipeline run (PipelineUpdate)
    work_in_progress  a repository's uncommitted changes chunked as a partial commit (the `in_progress` files)
    live_prediction   what the ranker folder adds: the remaining files (live ranker), likely authors, when
    watch       predictions that follow a working tree and HEAD (watchfiles): predict.py --watch, GET /watch
"""
