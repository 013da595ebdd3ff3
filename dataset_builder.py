"""Stage 4: chronological training examples — given the recent history and a task, produce the change.

The stage's code: repo2model/stages/dataset_builder.py (`python dataset_builder.py --help` for its options).
"""

import sys

from repo2model.stages.dataset_builder import main

if __name__ == "__main__":
    sys.exit(main())
