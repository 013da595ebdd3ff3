"""Code structure: tree-sitter units of a file version, and chunking a commit's patches into them.

    units.py      the units of one file version (functions, methods, types, tests, ...) and their modules
    chunking.py   `chunk_commit` / `Chunker`: a commit's changed lines mapped to the units they touch
    patches.py    a patch's lines with their numbers, a chunk's diff text, splitting large units
    pieces.py     the changed lines of one file grouped by unit, or by hunk outside every unit
    moves.py      deleted + added units with the same body in one commit -> MOVED_/RENAMED_ chunks
    execution.py  chunking a whole history in order: batches in this process or a pool of workers
    previous.py   an incremental run's previous chunks.jsonl, its commits' chunk lines copied out
"""
