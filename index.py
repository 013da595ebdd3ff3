"""Stage `index`: the repository's code units at the current tree, embedded and searchable, in Qdrant.

The stage's code: repo2model/stages/index.py (`python index.py --help` for its options).
"""

import sys

from repo2model.stages.index import main

if __name__ == "__main__":
    sys.exit(main())
