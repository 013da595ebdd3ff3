"""The stages and tools, one module each, and the pipeline that runs them.

A stage module holds the stage's contract (SECTION and Config: its config section; CODE: the packages it runs;
stage_inputs, stage_outputs; run(); main(), the CLI of its top-level script) and reads like a table of
contents: run() calls well-named steps whose code lives in the packages.

    git_scraper       stage 1: the history -> commits.json
    semantic_chunker  stage 2: each changed line mapped to the syntax unit it touches -> chunks.jsonl
    index             the code units of the current tree, embedded and searchable (Qdrant)
    tokenizer         the commit language's tokenizer, and every commit encoded -> tokens.pt
    dataset_builder   the chronological train/val/test examples -> training_data_*.pt
    train_model       the language model: a small LLaMA from scratch, or LoRA/QLoRA on a base model
    train_ranker      the LightGBM file ranker and the change-type classifier -> ranker/
    evaluate          every predictor scored on the later commits -> evaluation.json/.md/.png
    predict           tool: the predicted next change for a task, as JSON
    serve             tool: the same over HTTP (n8n calls it)
    export            tool: the trained model as GGUF for llama.cpp and Ollama

The pipeline (pipeline.py --help):

    pipeline          runs the stages in order, each skipped when up to date
    fingerprint       when a stage is up to date: the digest of its inputs, config and code; the run state
    update_run        --update and --rollback: the new commits learnt without a service gap
    generations       the model generations of an update: next/, the switch, previous/
"""
