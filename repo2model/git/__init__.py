"""Everything that reads a git repository. Missing objects (partial clones, pruned mirrors) degrade and are
counted, never crash.

    commands.py   the one way to run git: the repository explicit, the caller's GIT_* variables ignored, errors
    objects.py    a tree's files (`ls_tree`) and blob contents and sizes (`CatFile`), missing objects answered None
    refs.py       the repository to scrape, its refs and branches, the commits to scrape, which branches hold each
    log.py        reading the `git log -z --raw -p` stream one commit and one file section at a time
    scraping.py   `Scraper`: commits into `Commit` records (patches filtered, truncated, redacted); `scrape_recent`
    previous.py   an incremental scrape's previous commits.json, its records reused by offset
    totals.py     what commits.json's metadata and the scraper's summary count
    redact.py     `Redactor`: secrets in patches, messages and paths replaced by <REDACTED:type>
    working_tree.py  the uncommitted changes (staged, unstaged, untracked) as one partial commit on top of HEAD
"""
