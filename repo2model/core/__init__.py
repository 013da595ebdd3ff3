"""What every stage needs, and nothing of any one stage.

    errors      UserError: a problem the user can fix, reported in one line
    config      typed, strict loading of config.yaml: sections as dataclasses, --set values, former section names
    cli         what every stage's main() shares: --config, --output-dir, --set, loading, errors to exit codes
    paths       ArtifactPaths: where each artifact lives under the output folder
    artifacts   atomic writes, streaming readers and writers of each artifact (plain or zstd-compressed)
    records     the records passed between stages (Commit, FileChange, Chunk, ...), one definition each
    logs        logging to the console and to pipeline.log
    progress    progress bars on a terminal, plain lines elsewhere
    stats       small summary figures the data and training stages report
"""
