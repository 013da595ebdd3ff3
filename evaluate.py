"""Evaluate every predictor on held-out, later commits: the baselines, the learned ranker, the language model.

The stage's code: repo2model/stages/evaluate.py (`python evaluate.py --help` for its options).
"""

import sys

from repo2model.stages.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
