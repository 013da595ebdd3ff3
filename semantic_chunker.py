"""Stage 2, the semantic chunker: every changed line mapped to the syntax unit it touches.

The stage's code: repo2model/stages/semantic_chunker.py (`python semantic_chunker.py --help` for its options).
"""

import sys

from repo2model.stages.semantic_chunker import main

if __name__ == "__main__":
    sys.exit(main())
