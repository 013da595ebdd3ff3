"""From generated text to ranked files: the generation side of the file ranking.

    parse_generation  a generated text -> a Candidate: its files and changes (the commit language's parser), and
                      whether it is malformed and why; never raises
    rank_candidates   files, modules and symbols ranked across the candidates by weighted votes, and the best
                      candidate's code sketch (file_ranking `generation`)
    merge_rankings    the files the model scored by likelihood first, then those only generation names
                      (file_ranking `likelihood` and `both`)

A candidate's weight is exp(mean log-probability of its tokens); a file's `score` is the weight share of the
candidates that name it (1.0: every candidate); ties keep the order of first appearance.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from repo2model.serving.prediction import Candidate, ChangeTypeWeight, PredictedFile

log = logging.getLogger("predict")


@dataclass
class RankedFiles:
    """The files ranked best first, the modules and symbols in the order of their weight, the code sketch."""

    files: list[PredictedFile]
    modules: list[str]
    symbols: list[str]
    code_sketch: str


def parse_generation(language, text: str, score: float) -> Candidate:
    """Generated text (with weight `score`) -> a Candidate; a malformed one lists its problems."""
    try:
        parsed = language.parse_commit(text)
    except Exception as exc:  # the parser promises not to raise; a generation must never crash a request
        log.warning("parse_commit raised %s on a generation", type(exc).__name__)
        return Candidate(text, score, files=[], malformed=True, problems=[f"parser error: {type(exc).__name__}: {exc}"],
                         truncated=False)
    files = [f for f in parsed.files if f.path]
    problems = list(parsed.problems)
    if not files:
        problems.append("no file in the generated text")
    return Candidate(text, score, files=files, malformed=bool(problems), problems=problems, truncated=parsed.truncated)


def rank_candidates(candidates: list[Candidate], max_files: int) -> RankedFiles:
    """Files, modules and symbols ranked across candidates by weighted votes, plus the best code sketch."""
    total = sum(c.score for c in candidates)
    weights = [c.score / total if total > 0 else 1.0 / len(candidates) for c in candidates]
    # path -> the file, the weight of each change type, the weight of each symbol
    tally: dict[str, tuple[PredictedFile, dict[str, float], dict[str, float]]] = {}
    for weight, candidate in zip(weights, candidates):
        seen = set()
        for parsed in candidate.files:
            file, types, symbols = tally.setdefault(
                parsed.path, (PredictedFile(parsed.path, 0.0, parsed.module, votes=0), {}, {}))
            if parsed.path not in seen:
                file.score += weight
                file.votes += 1
                seen.add(parsed.path)
            file.module = file.module or parsed.module
            for change in parsed.chunks:
                if change.change_type:
                    types[change.change_type] = types.get(change.change_type, 0.0) + weight
                if change.symbol:
                    symbols[change.symbol] = symbols.get(change.symbol, 0.0) + weight
    ranked = sorted(tally.values(), key=lambda t: -t[0].score)[:max_files]  # stable: first appearance breaks ties
    modules: dict[str, float] = {}
    symbol_weights: dict[str, float] = {}
    for file, types, symbols in ranked:
        file.score = round(file.score, 6)
        file.change_types = [ChangeTypeWeight(t, round(w, 6)) for t, w in sorted(types.items(), key=lambda kv: -kv[1])]
        by_weight = sorted(symbols.items(), key=lambda kv: -kv[1])
        file.symbols = [s for s, _ in by_weight]
        if file.module:
            modules[file.module] = modules.get(file.module, 0.0) + file.score
        for symbol, weight in by_weight:
            symbol_weights[symbol] = symbol_weights.get(symbol, 0.0) + weight
    best = max(range(len(candidates)), key=lambda i: (not candidates[i].malformed, weights[i]), default=None)
    return RankedFiles(
        files=[file for file, _, _ in ranked],
        modules=[m for m, _ in sorted(modules.items(), key=lambda kv: -kv[1])],
        symbols=[s for s, _ in sorted(symbol_weights.items(), key=lambda kv: -kv[1])],
        code_sketch=code_sketch(candidates[best]) if best is not None else "",
    )


def merge_rankings(scored: list[dict], generated: RankedFiles, max_files: int) -> RankedFiles:
    """The `both`/`likelihood` file list: every scored file by its likelihood (`rank_value`, best first; ties keep
    the candidates' order), then the files only generation named (not scored: e.g. new files), in generation's
    order. A file keeps its generation `score`/`votes`/change types/symbols when generation named it (else 0 /
    none) and gets its `logprob`. Modules follow the merged file order; symbols and the code sketch are
    generation's."""
    by_path = {f.path: f for f in generated.files}
    files = []
    for entry in sorted(scored, key=lambda s: -s["rank_value"]):
        gen = by_path.get(entry["path"])
        files.append(PredictedFile(
            path=entry["path"],
            score=gen.score if gen else 0.0,
            votes=gen.votes if gen else 0,
            module=(gen.module if gen else None) or entry["module"],
            change_types=gen.change_types if gen else [],
            symbols=gen.symbols if gen else [],
            logprob=round(entry["logprob"], 6),
            logprob_tokens=entry["tokens"],
        ))
    seen = {f.path for f in files}
    files = (files + [f for f in generated.files if f.path not in seen])[:max_files]
    modules = list(dict.fromkeys(f.module for f in files if f.module))
    return RankedFiles(files, modules, generated.symbols, generated.code_sketch)


def code_sketch(candidate: Candidate) -> str:
    """The code of one candidate, file by file, each unit headed by its change type and symbol."""
    parts = []
    for parsed in candidate.files:
        for change in parsed.chunks:
            if change.code:
                head = " ".join(x for x in (parsed.path, change.change_type, change.symbol) if x)
                parts.append(f"# {head}\n{change.code.rstrip()}\n")
    return "\n".join(parts)
