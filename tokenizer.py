"""Stage 3: the tokenizer of the commit language, and every commit's token ids.

The stage's code: repo2model/stages/tokenizer.py (`python tokenizer.py --help` for its options).
"""

import sys

from repo2model.stages.tokenizer import main

if __name__ == "__main__":
    sys.exit(main())
