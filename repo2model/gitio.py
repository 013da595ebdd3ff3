"""Deprecated: moved to `repo2model.git` (this re-export goes once every caller has moved)."""

from repo2model.git import CatFile, git, open_repository  # noqa: F401
