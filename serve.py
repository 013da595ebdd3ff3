"""An HTTP JSON service around the predictor (repo2model.serving.predictor), for n8n's HTTP Request node (or curl).

The stage's code: repo2model/stages/serve.py (`python serve.py --help` for its options).
"""

import sys

from repo2model.stages.serve import main

if __name__ == "__main__":
    sys.exit(main())
