"""Model generations for `pipeline.py --update`: where an update writes, its journal, the switch, the rollback.

An update must never leave the service without a complete model, so everything that belongs to one
trained model is written beside the live one and switched in only when all of it is complete:

    <output_dir>/model/ ranker/ training_data_*.pt dataset_stats.json training_logs/ evaluation.*
                             the live generation (serve.py and predict.py read it)
    <output_dir>/next/       an update in progress: the same names (+ checkpoints/) and update.json,
                             its journal (what it found, which stages are done, how far the switch got)
    <output_dir>/previous/   what the last switch replaced; `pipeline.py --rollback` brings it back

What follows the repository rather than a model (commits.json, chunks.jsonl, the frozen tokenizer,
tokens.pt, the code index) is updated in place: every model generation reads it the same way.

The switch moves each item of next/ into place, the model folder last. Each item is exchanged with
the live one in one step where the filesystem can (Linux renameat2 RENAME_EXCHANGE; elsewhere two
renames), so a reader finds either the old or the new version. The journal records each new item's
identity (device and inode, which renames keep) before the first move, so a run killed in the middle
finishes the switch the next time the pipeline starts, whatever step it stopped at. A rollback is the
same switch with previous/ as the new generation (so a second rollback undoes the first).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import json
import logging
import os
import shutil
import time
from pathlib import Path

from repo2model.core.artifacts import write_json
from repo2model.core.errors import UserError
from repo2model.core.paths import INFO_FILE, ArtifactPaths

log = logging.getLogger("pipeline")

NEXT = "next"
PREVIOUS = "previous"
REPLACED_BY = ".replaced_by.json"  # in previous/: the live model that replaced it
JOURNAL = "update.json"
# ArtifactPaths fields that belong to one model generation: an update writes them under next/.
STAGED_FIELDS = ("train_data", "val_data", "test_data", "dataset_stats", "model_dir", "checkpoints_dir",
                 "training_logs", "ranker_dir", "evaluation")
NOT_SWITCHED = {JOURNAL, "checkpoints"}  # the update's own: removed with next/, never switched in


def staged_paths(paths: ArtifactPaths) -> ArtifactPaths:
    """The paths of an update: a model generation's artifacts under next/, the rest as they are."""
    folder = paths.output_dir / NEXT
    return dataclasses.replace(paths, **{f: folder / getattr(paths, f).name for f in STAGED_FIELDS})


def model_info(model_dir: Path) -> dict | None:
    """The model folder's training_info.json (its marker), or None when there is no readable one."""
    try:
        return json.loads((Path(model_dir) / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def describe_model(info: dict | None) -> str:
    if not info:
        return "a model without training_info.json"
    return (f"the model trained at {info.get('trained_at', '?')} (last commit {(info.get('last_commit') or '?')[:12]}, "
            f"{info.get('steps', '?')} steps{', warm start' if info.get('warm_start') else ''})")


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


@dataclasses.dataclass
class Journal:
    """next/update.json: one update (or rollback) from its start to the end of its switch."""

    kind: str = "update"  # update | rollback
    started_at: str = dataclasses.field(default_factory=now_iso)
    state: str = "running"  # running: stages | switching: moving items into place
    base: dict | None = None  # training_info.json of the model the update continues
    new_commits: int = 0
    removed_commits: int = 0
    removed_sample: list[str] = dataclasses.field(default_factory=list)
    full_rescrape: str | None = None  # why the scraper scraped everything again (None: it did not)
    completed: list[str] = dataclasses.field(default_factory=list)  # stages done in this update
    figures: dict = dataclasses.field(default_factory=dict)  # stage -> the figures of its summary the report needs
    switch: dict[str, list[int]] = dataclasses.field(default_factory=dict)  # item -> [device, inode] of the new one

    @classmethod
    def read(cls, folder: Path) -> "Journal | None":
        try:
            data = json.loads((folder / JOURNAL).read_text(encoding="utf-8"))
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in data.items() if k in known})
        except (OSError, ValueError, TypeError):
            return None

    def save(self, folder: Path) -> None:
        write_json(folder / JOURNAL, dataclasses.asdict(self))


class Generations:
    """The live model generation of an output folder, the update in progress (next/) and the previous one."""

    def __init__(self, paths: ArtifactPaths):
        self.paths = paths
        self.out = paths.output_dir
        self.next = self.out / NEXT
        self.previous = self.out / PREVIOUS

    def pending(self) -> Journal | None:
        """The journal of an update a run did not finish; a next/ without one (killed before it was written, or
        while it was being removed after a switch) holds nothing worth keeping and is removed."""
        if not self.next.exists():
            return None
        journal = Journal.read(self.next)
        if journal is None:
            log.info("removed %s: left by a run killed before its update began or after it finished", self.next)
            shutil.rmtree(self.next, ignore_errors=True)
        return journal

    def begin(self, base: dict | None) -> Journal:
        self.next.mkdir(parents=True, exist_ok=True)
        journal = Journal(base=base)
        journal.save(self.next)
        return journal

    def discard(self) -> None:
        shutil.rmtree(self.next, ignore_errors=True)

    def items(self, folder: Path | None = None) -> list[str]:
        """What next/ (or `folder`) holds to switch in, in switching order: the model folder last, its ranker
        just before."""
        last = [self.paths.ranker_dir.name, self.paths.model_dir.name]
        names = sorted(p.name for p in (folder or self.next).iterdir()
                       if p.name not in NOT_SWITCHED and not p.name.startswith("."))
        return [n for n in names if n not in last] + [n for n in last if n in names]

    def switch(self, journal: Journal) -> list[str]:
        """Move next/'s items into place (the replaced ones into previous/), then remove next/. Safe to kill at
        any point: the next call (with the journal read back) finishes it."""
        if journal.state != "switching":
            shutil.rmtree(self.previous, ignore_errors=True)  # the generation before the live one: replaced now
            journal.state = "switching"
            journal.switch = {name: list(identity(self.next / name)) for name in self.items()}
            journal.save(self.next)
        self.previous.mkdir(exist_ok=True)
        for name, ident in journal.switch.items():
            self._switch_one(name, tuple(ident))
        (self.next / JOURNAL).unlink(missing_ok=True)  # first: a next/ without a journal is leftover
        shutil.rmtree(self.next, ignore_errors=True)
        # Which live model previous/ was replaced by: a full run trains another one, and a rollback then has
        # nothing to go back to (it would put back a model older than the full run's).
        write_json(self.previous / REPLACED_BY, {"model": model_info(self.paths.model_dir)})
        return list(journal.switch)

    def _switch_one(self, name: str, ident: tuple[int, int]) -> None:
        live, new, old = self.out / name, self.next / name, self.previous / name
        if identity(live) == ident:  # switched already; after an exchange `new` holds the replaced version
            if os.path.lexists(new):
                os.rename(new, old)
            return
        if not os.path.lexists(new):
            log.warning("update: %s is neither in %s nor in place (removed by hand?): left as it is", name, self.next)
            return
        if os.path.lexists(live):
            if exchange(new, live):
                os.rename(new, old)
                return
            os.rename(live, old)  # no atomic exchange here: for a moment there is no `live`
        os.rename(new, live)

    def rollback(self) -> tuple[dict | None, dict | None, list[str]]:
        """Switch previous/ back in (the live generation goes to previous/): (restored model's info,
        replaced model's info, items switched)."""
        if not (self.previous / self.paths.model_dir.name).is_dir():
            raise UserError(f"{self.previous}: no previous model to restore (an update keeps the model it replaces "
                            "there; there has been no update since the last full run)")
        restored = model_info(self.previous / self.paths.model_dir.name)
        replaced = model_info(self.paths.model_dir)
        marker = self.previous / REPLACED_BY
        switched_in = json.loads(marker.read_text(encoding="utf-8")).get("model") if marker.is_file() else replaced
        if switched_in != replaced:
            raise UserError(f"{self.paths.model_dir}: {describe_model(replaced)} is not the model the last update "
                            f"switched in ({describe_model(switched_in)}): a full run has trained it since, so there "
                            f"is nothing to roll back to ({self.previous} still holds the model from before that update)")
        journal = Journal(kind="rollback", base=replaced, state="switching")
        journal.switch = {name: list(identity(self.previous / name)) for name in self.items(self.previous)}
        journal.save(self.previous)  # travels with the folder: once it is next/, a killed rollback is finished
        os.rename(self.previous, self.next)
        return restored, replaced, self.switch(journal)


def identity(path: Path) -> tuple[int, int] | None:
    """(device, inode) of a file or folder, which a rename keeps: tells the new version from the old."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where that is not available
    (another OS, an old kernel or C library, a filesystem without it): the caller then renames twice."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(b))
