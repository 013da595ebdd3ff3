"""Run the whole pipeline, git history -> trained model, as configured in `config.yaml`.

The stage's code: repo2model/stages/pipeline.py (`python pipeline.py --help` for its options).
"""

import sys

from repo2model.stages.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
