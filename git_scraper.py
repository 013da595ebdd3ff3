"""Stage 1: a repository's whole history -> `commits.json`, from one streaming `git log`.

The stage's code: repo2model/stages/git_scraper.py (`python git_scraper.py --help` for its options).
"""

import sys

from repo2model.stages.git_scraper import main

if __name__ == "__main__":
    sys.exit(main())
