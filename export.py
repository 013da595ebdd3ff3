"""Stage `export`: the trained model as GGUF files for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile.

The stage's code: repo2model/stages/export.py (`python export.py --help` for its options).
"""

import sys

from repo2model.stages.export import main

if __name__ == "__main__":
    sys.exit(main())
