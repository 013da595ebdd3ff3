"""Train the file ranker: LightGBM lambdarank over the history's signals (and the language model's, if any).

The stage's code: repo2model/stages/train_ranker.py (`python train_ranker.py --help` for its options).
"""

import sys

from repo2model.stages.train_ranker import main

if __name__ == "__main__":
    sys.exit(main())
