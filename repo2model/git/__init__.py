"""The one way to run git, scraping a history into Commit records, and secret redaction. Missing objects (partial clones, pruned mirrors) degrade and are counted, never crash."""
