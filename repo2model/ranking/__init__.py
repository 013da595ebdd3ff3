"""Which files change next: the history's statistics, the model-free baselines, named features, the LightGBM
ranker, change types, symbols, and the metrics every predictor is scored with.

    history       PastCommits: the statistics of the commits so far (saved with the ranker as history.json)
    baselines     the model-free predictors (frequent, recent, cochange, similar_commits, code_search, fusion)
    targets       the walk over the history to each target commit: what a prediction for it may know
    features      candidate files and their named features; saving and loading feature rows
    pool          candidates for large commits (a cheap pre-score over the tree), name and folder relations
    messages      commit messages that say nothing (boilerplate, near-empty): the rule and the history's counts
    prior         the prior ranker learned across histories, shipped in prior/, that every ranker starts from
    dense         the dense task-file similarity feature (embeddings) and its saved settings
    config        the `evaluate` and `train_ranker` config sections, LightGBM's settings
    ranker        the LightGBM lambdarank ranker, its folder, fitting, importances
    change_types  the change-type classifier of a predicted file
    symbols       a predicted file's symbols most likely to change
    symbol_history   each symbol's changes, answered as of any commit: recency, similar commits, co-change
    symbol_features  candidate units (of the likely files, of search hits) and their named features
    symbol_ranker    the learned symbol ranker: lambdarank, calibrated probabilities, its files, UnitScorer
    symbol_training  fitting it in train_ranker; symbol recall@5/@10 there and in evaluate.py
    file_ranking  the ranker at prediction time (FileRanking), merged into the prediction JSON
    new_files     where the commit will create files: folders (and names from the task's identifiers) for them
    metrics       Prediction / Truth, recall@k, MRR, change-type / module / symbol scores, per commit size
    situation     which situation an evaluation measures: uninformative test messages, recall on the informative
                  ones, candidate recall by commit size, new files found (evaluation.md's section)
    row_cache     the feature rows of the targets a previous fit computed, reused by the next refit
    report        an evaluation's markdown tables (evaluation.md) and chart (evaluation.png)
    live          the work in progress as evidence: in-progress features, the live ranker, simulated partial commits
    people        who and when: the activity (activity.json), likely authors (author model), the next commit's time
    live_training what train_ranker adds for predictions as you code: the live ranker, author model, activity
    live_evaluation  evaluate.py's figures for them: the partial-commit simulation, who and when against baselines
"""
