"""The prompt for the code-writing model: one text from the task, the predicted change and the context pack.

    prompt = render_prompt(task, prediction, pack, test_failures, repository, commit)

In order: the task, the predicted files with change types and symbols (and, with a ranker, the folders where new
files would most likely go), the code context (each entry under its
header, fenced in its language), recent test failures (from the request), and a short instruction to answer
with a unified diff.
"""

from __future__ import annotations

from pathlib import Path

from repo2model.retrieval.context import ContextEntry, entry_header
from repo2model.serving.prediction import Prediction

NEW_FOLDERS = 3  # of the prediction's new-file folders, named in the prompt
FENCE_LANGUAGE = {"rust": "rust", "python": "python", "markdown": "markdown", "toml": "toml", "yaml": "yaml",
                  "json": "json", "shell": "bash", "javascript": "javascript", "typescript": "typescript"}


def render_prompt(task: str, prediction: Prediction, context: list[ContextEntry], test_failures: str | None = None,
                  repository: str | None = None, commit: str | None = None, max_files: int = 10) -> str:
    """One text for the code-writing model: the task, the predicted change, the code, recent test failures."""
    where = f" `{Path(repository).name}`" if repository else ""
    at = f" at commit {commit[:12]}" if commit else ""
    parts = [f"You are changing the repository{where}{at}.", "", "## Task", task.strip(), "",
             "## Predicted change (from the repository's own history model; it may be wrong)"]
    files = prediction.files[:max_files]
    if not files:
        parts.append("No file predicted.")
    for rank, entry in enumerate(files, start=1):
        types = ", ".join(t.type for t in entry.change_types)
        module = f" (module {entry.module})" if entry.module else ""
        parts.append(f"{rank}. {entry.path}{module}" + (f": {types}" if types else ""))
        if entry.symbols:
            parts.append("   symbols: " + ", ".join(entry.symbols[:12]))
    folders = (prediction.new_files or [])[:NEW_FOLDERS]
    if folders:  # where a new file would go (repo2model.ranking.new_files): folders, with a guessed name or two
        parts.append("New files, if the change needs any, most likely go in: " + "; ".join(
            (f"{f['folder'] or '.'}/" + (f" (e.g. {', '.join(f['paths'][:2])})" if f.get("paths") else ""))
            for f in folders))
    parts += ["", "## Code context (current code)"]
    if not context:
        parts.append("No code context available.")
    for entry in context:
        fence = "````" if "```" in entry.text else "```"
        parts += [entry_header(entry), f"{fence}{FENCE_LANGUAGE.get(entry.language, '')}", entry.text.rstrip("\n"),
                  fence, ""]
    parts += ["## Recent test failures", (test_failures or "").strip() or "None reported.", "",
              "## What to answer",
              ("Make the change the task describes, in the files above where they fit (add files where needed). "
               "Answer with a unified diff (git diff format) and a one-line commit message.")]
    return "\n".join(parts) + "\n"
