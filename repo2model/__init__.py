"""The library every script of the git-history-to-model pipeline imports (scripts never import each other).

Shared infrastructure: user errors (`errors`), config loading and validation
(`config`), artifact locations (`paths`), atomic, streaming and optionally
zstd-compressed artifact I/O (`artifacts`), the stage CLIs' common parts
(`cli`), logging (`logs`), and running git (`git`). The domain pieces (records,
scraping, chunking, the commit language, models, prediction, ranking,
retrieval, ...) each live in their own module; each module's docstring says
what it reads and writes.
"""

import sys as _sys

if _sys.version_info < (3, 11):  # tomllib, enum.StrEnum; refused here, before an import fails somewhere deep
    raise SystemExit(f"repo2model needs Python 3.11 or newer; this is Python {_sys.version.split()[0]} "
                     f"({_sys.executable}): create the virtual environment with python3.11 or newer")
