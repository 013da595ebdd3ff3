"""The Ollama Modelfile written beside the GGUF files.

    FROM ./model-q4_k_m.gguf
    TEMPLATE \"\"\"{{ .Prompt }}\"\"\"
    PARAMETER stop "<COMMIT_END>"
    PARAMETER num_ctx 512

The template is raw: the model was trained on the commit language (a prompt of recent commits and a task, then
the commit it continues with), not on chat turns, so the prompt is passed through as written. Generation stops
at the end of the commit; the context is the length the model was trained on (positions beyond it were never
seen in training). The GGUF adds the bos token itself, as every training prompt started with it.
"""

from __future__ import annotations

from pathlib import Path

from repo2model.core.artifacts import atomic_open
from repo2model.language.tokens import COMMIT_END


def modelfile_text(gguf_name: str, context_length: int) -> str:
    return (
        f"# Ollama: ollama create <name> -f Modelfile (in this folder)\n"
        f"FROM ./{gguf_name}\n"
        'TEMPLATE """{{ .Prompt }}"""\n'
        f'PARAMETER stop "{COMMIT_END}"\n'
        f"PARAMETER num_ctx {context_length}\n"
    )


def write_modelfile(folder: Path, gguf_name: str, context_length: int) -> Path:
    path = Path(folder) / "Modelfile"
    with atomic_open(path) as fh:
        fh.write(modelfile_text(gguf_name, context_length))
    return path
