"""The prediction: what `Predictor.predict` answers, as typed records; `to_json()` is what predict.py prints and
serve.py replies (the prediction JSON, the schema n8n's workflows read).

    Prediction      the task and its history, the files ranked with what each is predicted to undergo, the modules
                    and symbols, the code sketch, every generated candidate, how the files were ranked, and (with
                    a code index) the code context and the prompt for a code-writing model
    PredictedFile   one file: its score, module, change types, symbols; its likelihood (`logprob`) when the model
                    scored it, its `votes` when generation ran, `ranked_by` when a learned ranker ranked the files,
                    `symbol_scores` when the symbol ranker named its symbols (each with its probability of change)
    Candidate       one generated text, parsed back into files (malformed ones say why)

Who and when: `authors` (the likely authors, top 3 with probabilities) and `when` (the expected time to the next
commit touching the top files, with an interval) come from the ranker folder's author model and activity
(repo2model.ranking.people). With the working tree as evidence: `in_progress` (the files already changed, with
their change types from the chunker) and `work_in_progress` (HEAD, counts, which ranker ranked the remaining
files); `files` then holds only files not yet changed.

A key whose value does not apply is left out of the JSON, not null: `votes` (a file only the ranker named),
`logprob` / `logprob_tokens` (a file the model did not score), `ranked_by`, `ranker_candidates` and `new_files` (no
ranker),
`symbol_scores` (no symbol ranker named the file's symbols),
`context` / `prompt` / `context_source` (no code index: repo2model.retrieval), `authors` and `when` (no activity
saved with a ranker),
`in_progress` / `work_in_progress` (no working tree asked for).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from repo2model.core.records import Commit
from repo2model.language.parse import ParsedFile


@dataclass
class ChangeTypeWeight:
    type: str  # e.g. MODIFIED_FUNCTION
    weight: float | None  # the weight share of the candidates saying so; None: the ranker's classifier says so


@dataclass
class SymbolScore:
    symbol: str
    score: float  # the symbol ranker's probability that the change touches this symbol


@dataclass
class PredictedFile:
    path: str
    score: float = 0.0  # the ranker's score, else the weight share of the candidates naming the file
    module: str | None = None
    change_types: list[ChangeTypeWeight] = field(default_factory=list)  # most likely first
    symbols: list[str] = field(default_factory=list)  # most likely first
    votes: int | None = None  # candidates naming the file (None: only the ranker named it)
    logprob: float | None = None  # log-probability (nats) that the change starts with this file (None: not scored)
    logprob_tokens: int | None = None  # the tokens that log-probability is over
    ranked_by: str | None = None  # ranker, ranker_lm or generation (None: no ranker)
    symbol_scores: list[SymbolScore] = field(default_factory=list)  # the symbol ranker's symbols, most likely first

    OPTIONAL = ("votes", "logprob", "logprob_tokens", "ranked_by")  # left out of the JSON when None

    def to_json(self) -> dict[str, Any]:
        out = {"path": self.path, "score": self.score, "votes": self.votes, "module": self.module,
               "change_types": [asdict(t) for t in self.change_types], "symbols": list(self.symbols),
               "logprob": self.logprob, "logprob_tokens": self.logprob_tokens, "ranked_by": self.ranked_by,
               "symbol_scores": [asdict(s) for s in self.symbol_scores]}
        if not self.symbol_scores:  # no symbol ranker named them
            del out["symbol_scores"]
        return {k: v for k, v in out.items() if v is not None or k not in self.OPTIONAL}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "PredictedFile":
        """The inverse of to_json (a key it does not know is a TypeError: a bug, not an input)."""
        return cls(**{**data, "change_types": [ChangeTypeWeight(**t) for t in data.get("change_types") or []],
                      "symbol_scores": [SymbolScore(**s) for s in data.get("symbol_scores") or []]})


@dataclass
class Candidate:
    """One generated text and what the commit language's parser makes of it."""

    text: str  # special tokens kept: they are the structure
    score: float  # exp(mean log-probability of its tokens): its weight in the file ranking
    files: list[ParsedFile]  # with path, module and the parsed changes (change type, symbol, code)
    malformed: bool
    problems: list[str]
    truncated: bool

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "score": round(self.score, 6), "malformed": self.malformed,
                "problems": list(self.problems), "truncated": self.truncated, "files": [f.path for f in self.files]}


@dataclass
class Decoding:
    decoding: str  # greedy, sample or beam
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    num_candidates: int  # 0: nothing generated (file_ranking likelihood)
    seed: int


@dataclass
class FileRankingSummary:
    """How the language model ranked the files (the prediction config's file_ranking and rank_score)."""

    method: str  # likelihood, generation or both
    score: str  # sum or mean
    files_scored: int  # files whose likelihood the model computed


@dataclass
class HistoryCommit:
    hash: str
    message: str  # its first line

    @classmethod
    def of(cls, commit: Commit) -> "HistoryCommit":
        return cls(commit.hash, commit.message.splitlines()[0] if commit.message else "")


@dataclass
class MissingObjects:
    """What objects the repository lacks (a partial clone, a pruned mirror) took away from the prediction."""

    history_files: int = 0  # file changes of the history without a patch
    code_search_files: int = 0  # files the ranker's code search could not read
    context_files: int = 0  # predicted files left out of the code context


@dataclass
class ChangeTypeCount:
    type: str  # e.g. NEW_FUNCTION
    chunks: int  # the chunks of the file with that change type


@dataclass
class InProgressFile:
    """A file the working tree already changes (against HEAD): the chunker's view of it."""

    path: str
    status: str  # git's letter: A (untracked files too), M, D, R, C or T
    module: str | None = None
    change_types: list[ChangeTypeCount] = field(default_factory=list)  # most chunks first
    symbols: list[str] = field(default_factory=list)  # the changed symbols, in the file's order
    patch_skipped: str | None = None  # binary, too_large, filtered: no chunks, so no change types


@dataclass
class WorkInProgressSummary:
    """What the working tree held, and how the remaining files were ranked."""

    head: str | None  # the commit the changes are on top of (None: no commit yet)
    files: int  # changed files (staged, unstaged, untracked)
    untracked: int  # of which untracked, taken as new files
    left_out: dict[str, int] = field(default_factory=dict)  # untracked files not taken, by reason
    redactions: dict[str, int] = field(default_factory=dict)  # secrets replaced in the changes, per type
    ranking: str = ""  # live: the live ranker (in-progress features); ranker: without them; generation: no ranker
    changed: bool | None = None  # the top remaining files differ from the previous answer (None: not followed)


@dataclass
class LikelyAuthor:
    author: str  # the e-mail as the history has it (lower-cased), or the name
    name: str
    probability: float


@dataclass
class NextCommitTime:
    """When the next commit touching the top files is expected, counted from the latest commit (`after`)."""

    files: list[str]
    after: str | None  # the latest commit's time (ISO 8601)
    expected_seconds: float | None
    expected_at: str | None
    interval_seconds: list[float] | None  # [10th percentile, 90th percentile]
    basis: str  # files: the files' own gaps between changes; commits: the gaps between all commits
    gaps: int  # how many gaps the estimate read


@dataclass
class Prediction:
    task: str
    history: list[HistoryCommit] = field(default_factory=list)  # the commits in the prompt, oldest first
    model: str | None = None  # the model folder
    prompt_tokens: int = 0
    decoding: Decoding | None = None
    file_ranking: FileRankingSummary | None = None
    files: list[PredictedFile] = field(default_factory=list)  # best first
    modules: list[str] = field(default_factory=list)  # best first
    symbols: list[str] = field(default_factory=list)  # best first
    code_sketch: str = ""  # the best candidate's code, file by file
    candidates: list[Candidate] = field(default_factory=list)
    seconds: float = 0.0  # the language model's time
    ranking: str = ""  # what ranked the files: ranker, ranker_lm, or the file_ranking method
    ranker_candidates: int | None = None  # the files the learned ranker considered (None: no ranker)
    new_files: list[dict] | None = None  # where new files are likely: {folder, score, paths} (None: no ranker)
    context: list[dict] | None = None  # the code context's entries (repo2model.retrieval ContextEntry.to_dict)
    prompt: str | None = None  # the text for a code-writing model
    context_source: dict | None = None  # where the context's code came from, and why not from the index
    missing_objects: MissingObjects = field(default_factory=MissingObjects)
    authors: list[LikelyAuthor] | None = None  # most likely first (None: no activity saved with a ranker)
    when: NextCommitTime | None = None
    in_progress: list[InProgressFile] | None = None  # with the working tree: the files already changed
    work_in_progress: WorkInProgressSummary | None = None

    @property
    def malformed_candidates(self) -> int:
        return sum(c.malformed for c in self.candidates)

    def to_json(self) -> dict[str, Any]:
        out = {
            "task": self.task,
            "history": [asdict(c) for c in self.history],
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "decoding": asdict(self.decoding) if self.decoding else None,
            "file_ranking": asdict(self.file_ranking) if self.file_ranking else None,
            "files": [f.to_json() for f in self.files],
            "modules": list(self.modules),
            "symbols": list(self.symbols),
            "code_sketch": self.code_sketch,
            "malformed_candidates": self.malformed_candidates,
            "candidates": [c.to_json() for c in self.candidates],
            "seconds": self.seconds,
            "ranking": self.ranking,
        }
        if self.ranker_candidates is not None:
            out["ranker_candidates"] = self.ranker_candidates
        if self.new_files is not None:
            out["new_files"] = list(self.new_files)
        if self.context is not None:
            out.update(context=self.context, prompt=self.prompt, context_source=self.context_source)
        out["missing_objects"] = asdict(self.missing_objects)
        if self.authors is not None:
            out["authors"] = [asdict(a) for a in self.authors]
        if self.when is not None:
            out["when"] = asdict(self.when)
        if self.in_progress is not None:
            out["in_progress"] = [asdict(f) for f in self.in_progress]
            out["work_in_progress"] = asdict(self.work_in_progress) if self.work_in_progress else None
        return out
