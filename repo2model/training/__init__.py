"""Training the language model: packing, model and optimizer, warm start, checkpoints, the loop, the memory estimate, and loading trained model folders."""
