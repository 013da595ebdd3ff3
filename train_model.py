"""Train the model: a small LLaMA from scratch, or LoRA / QLoRA on a base model, sized to the hardware.

The stage's code: repo2model/stages/train_model.py (`python train_model.py --help` for its options).
"""

import sys

from repo2model.stages.train_model import main

if __name__ == "__main__":
    sys.exit(main())
