"""Training the language model: the library behind the train_model stage, and loading what it wrote.

In the order a run uses them (repo2model/stages/train_model.py's `run()` reads like this list):

    hardware      device, precision, packages and writable outputs checked first; DDP processes; peak memory
    warm_start    continuing from a model folder the stage wrote (update mode): checks and weights
    data          the example splits, the tokenizer they were encoded with, seq_len, the latest target commit
    packing       examples packed into rows, rows collated into batches, the batches of each optimizer step
    memory        the GPU memory estimate of a set-up (also a CLI: python -m repo2model.training.memory)
    batch_plan    micro-batch and gradient accumulation, sized to vram_budget_gb by the memory estimate
    model         the model to train: LLaMA from scratch, or a base model with a LoRA/QLoRA adapter
    optimizer     AdamW (or 8-bit), the learning-rate schedule, the number of steps
    training_run  TrainingRun (everything fixed for one run) and setup(), which builds it
    checkpoints   TrainState, checkpoints of one run (its fingerprint) saved and restored, the best
                  weights, the model folder
    loop          train_step, train (evaluations, early stopping, limits), held-out loss, finish
    logs          steps.jsonl, TensorBoard events, the loss curve
    models        loading (and merging) the model folders a run wrote: what prediction and serving read
"""
