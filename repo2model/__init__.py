"""Shared pieces of the git-history-to-model pipeline.

Every stage script imports from here and nowhere else for what stages have in
common: user errors (`errors`), config loading and validation (`config`),
artifact locations (`paths`), the record types passed between stages
(`records`), atomic and streaming artifact I/O (`artifacts`), reading git
objects (`git`) and logging (`logs`).
"""
