"""Histories for the ranking tests: real git repositories whose files only one kind of signal can find,
scraped and chunked by the real stages, and the dataset builder's time split written as ExampleSets."""

from __future__ import annotations

import random
from pathlib import Path

import torch

from helpers_data import scrape_and_chunk
from repo2model.core.artifacts import iter_commits_with_chunks
from repo2model.language.examples import ExampleSet
from repo2model.core.paths import ArtifactPaths

TOPICS = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet", "kilo",
          "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango"]
NOISE = ["update", "tweak", "change", "adjust", "work", "edit", "touch", "revise"]


def python_body(name: str, words: list[str], version: int) -> str:
    """A small Python file whose identifiers carry `words` (version: how many functions)."""
    return "".join(f"def {name}_{'_'.join(words)}_{i}(value):\n    return value + {i}\n\n\n" for i in range(version + 1))


def text_history(repo, commits: int = 120, seed: int = 0) -> None:
    """Only the task text finds the files: each commit changes the file of one random topic (and its test)
    and says so in its message; which topic comes next is random, so recency, frequency and co-change are
    no help."""
    rng = random.Random(seed)
    versions = {t: 0 for t in TOPICS}
    repo.commit("Start", {f"src/{t}.py": python_body(t, [t, "core"], 0) for t in TOPICS}
                | {f"tests/test_{t}.py": python_body(f"test_{t}", [t], 0) for t in TOPICS})
    for _ in range(commits):
        topic = rng.choice(TOPICS)
        versions[topic] += 1
        v = versions[topic]
        repo.commit(f"Improve the {topic} {rng.choice(['parser', 'engine', 'layer'])} for {topic} users",
                    {f"src/{topic}.py": python_body(topic, [topic, "core"], v),
                     f"tests/test_{topic}.py": python_body(f"test_{topic}", [topic], v)})


def cochange_history(repo, blocks: int = 100, pairs: int = 10, seed: int = 0) -> None:
    """Only co-change finds the files: pairs (a_i, b_i); each block changes a_i alone, then a_i with b_i. The
    order of pairs is random and the messages are noise, so b_i is found only through the rule a_i -> b_i."""
    rng = random.Random(seed)
    versions = [0] * pairs
    repo.commit("Start", {f"pkg/a{i}.py": python_body(f"a{i}", ["left"], 0) for i in range(pairs)}
                | {f"pkg/b{i}.py": python_body(f"b{i}", ["right"], 0) for i in range(pairs)})
    for _ in range(blocks):
        i = rng.randrange(pairs)
        versions[i] += 1
        repo.commit(f"{rng.choice(NOISE)} {rng.choice(NOISE)}", {f"pkg/a{i}.py": python_body(f"a{i}", ["left"], versions[i])})
        versions[i] += 1
        repo.commit(f"{rng.choice(NOISE)} {rng.choice(NOISE)}",
                    {f"pkg/a{i}.py": python_body(f"a{i}", ["left"], versions[i]),
                     f"pkg/b{i}.py": python_body(f"b{i}", ["right"], versions[i])})


# Topics whose files and tasks share no word: the file's identifiers carry the topic's words, each task names one
# of its synonyms once (all-MiniLM-L6-v2 matches "Handle thunder" to weather_forecast_climate_temperature_0).
SEMANTIC = {
    "weather": (["weather", "forecast", "climate", "temperature"],
                ["thunder", "drizzle", "hail", "blizzard", "storm", "sleet", "humidity", "rainfall"]),
    "cooking": (["kitchen", "recipe", "cooking", "ingredient"],
                ["oven", "bake", "saucepan", "spatula", "roast", "simmer", "dough", "frying"]),
    "music": (["music", "melody", "song", "instrument"],
              ["guitar", "piano", "violin", "drum", "chorus", "rhythm", "orchestra", "trumpet"]),
    "finance": (["finance", "money", "bank", "payment"],
                ["invoice", "salary", "loan", "mortgage", "dividend", "tax", "credit", "budget"]),
    "animals": (["animal", "pet", "zoo", "wildlife"],
                ["puppy", "kitten", "parrot", "hamster", "tiger", "elephant", "rabbit", "giraffe"]),
    "sports": (["sport", "game", "team", "match"],
               ["football", "tennis", "goalkeeper", "referee", "marathon", "basketball", "stadium", "tournament"]),
}


def semantic_history(repo, seed: int = 0) -> list[str]:
    """Only meaning finds the files: one neutrally named file per topic (src/m<i>.py); each commit changes the
    file of a random topic and its message names a synonym of the topic that no file and no other message
    holds, so code search, similar commits, recency and co-change are no help. Returns the files by topic."""
    rng = random.Random(seed)
    names = list(SEMANTIC)
    versions = {t: 0 for t in names}
    words = {t: rng.sample(SEMANTIC[t][1], len(SEMANTIC[t][1])) for t in names}
    files = [f"src/m{i}.py" for i in range(len(names))]
    repo.commit("Start", {f: python_body("_".join(SEMANTIC[t][0][:1]), SEMANTIC[t][0][1:], 0) for f, t in zip(files, names)})
    order = [t for t in names for _ in SEMANTIC[t][1]]
    rng.shuffle(order)
    for topic in order:
        versions[topic] += 1
        i = names.index(topic)
        repo.commit(f"{rng.choice(NOISE).capitalize()} {words[topic].pop()}",
                    {files[i]: python_body("_".join(SEMANTIC[topic][0][:1]), SEMANTIC[topic][0][1:], versions[topic])})
    return files


def artifacts(repo_path: Path, out: Path, val: float = 0.15, test: float = 0.2) -> ArtifactPaths:
    """commits.json and chunks.jsonl from the real stages, and training_data_{train,val,test}.pt holding the
    time split of the commits with chunks (all but the first), as the dataset builder splits them."""
    paths = scrape_and_chunk(repo_path, out)
    targets = [c["hash"] for c, chunks in iter_commits_with_chunks(paths.commits, paths.chunks) if chunks][1:]
    n_test, n_val = max(1, int(len(targets) * test)), max(1, int(len(targets) * val))
    splits = {"train": targets[: -(n_val + n_test)], "val": targets[-(n_val + n_test): -n_test],
              "test": targets[-n_test:]}
    for split, commits in splits.items():
        n = len(commits)
        ExampleSet(input_ids=torch.zeros(max(1, n), dtype=torch.int32), offsets=torch.arange(n + 1, dtype=torch.int64),
                   target_starts=torch.zeros(n, dtype=torch.int64), commits=commits, timestamps=[""] * n,
                   meta={"split": split}).save(paths.split_data(split))
    return paths
