"""Predict the next change: given recent history and a task, which files change, how, and the code's shape.

The stage's code: repo2model/stages/predict.py (`python predict.py --help` for its options).
"""

import sys

from repo2model.stages.predict import main

if __name__ == "__main__":
    sys.exit(main())
