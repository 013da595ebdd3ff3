"""repo2model/retrieval/bm25.py: the code-aware word split, BM25Index against bm25s, FileSearch on a real repository."""

from __future__ import annotations

import random
from collections import Counter

import bm25s
import pytest

from repo2model.core.errors import UserError
from repo2model.retrieval.bm25 import BM25Index, FileSearch, bm25_scores, code_words, path_words, word_counts


def test_code_words_split_identifiers_paths_and_paths_of_modules():
    assert code_words("read_many") == ["read", "many", "readmany"]
    assert code_words("ReadMany readMany READ_MANY") == ["read", "many", "readmany"] * 3
    assert code_words("HTTPServer2") == ["http", "server", "httpserver2"]
    assert code_words("crate::walk::WalkState") == ["crate", "walk", "walk", "state", "walkstate"]
    assert path_words("src/exec/job.rs") == ("src", "exec", "job", "rs")
    # Stop words, one-letter words and bare numbers go; plurals meet their singular.
    assert code_words("Fix the files in a second pass of 42 entries") == ["fix", "file", "second", "pass", "entry"]


def test_word_counts_match_code_words():
    text = "fn walk_dir(path: &Path) -> WalkDir { walk_dir(path) }"
    assert word_counts(text) == Counter(code_words(text))
    assert word_counts("a_b x", extra=["src", "x"], extra_weight=3) == Counter({"ab": 1, "src": 3, "x": 3})


def random_corpus(rng: random.Random, n: int) -> list[list[str]]:
    vocab = [f"w{i}" for i in range(40)]
    return [[rng.choice(vocab) for _ in range(rng.randint(0, 25))] for _ in range(n)]


def test_bm25_index_scores_like_bm25s_after_adds_and_removes():
    rng = random.Random(3)
    index = BM25Index()
    held: dict[int, list[str]] = {}
    for step in range(5000):  # enough removals to rebuild the postings (2048 dead slots) at least once
        key = rng.randrange(150)
        if key in held and rng.random() < 0.6:
            index.remove(key)
            del held[key]
        else:
            held[key] = random_corpus(rng, 1)[0]
            index.add(key, Counter(held[key]))
    assert len(index) == len(held) and set(index.keys()) == set(held)
    keys = sorted(held)
    reference = bm25s.BM25(method="lucene")
    reference.index([held[k] for k in keys], show_progress=False)
    for query in (["w1"], ["w2", "w2", "w7"], ["w3", "nowhere"], ["w0", "w5", "w9", "w11"]):
        expected = reference.get_scores(reference.get_tokens_ids(query)) if reference.get_tokens_ids(query) else None
        got = index.scores(query)
        for i, key in enumerate(keys):
            assert got.get(key, 0.0) == pytest.approx(float(expected[i]), rel=1e-5, abs=1e-6)
    assert index.scores([]) == {} and BM25Index().scores(["w1"]) == {}


def test_bm25_scores_one_shot_is_bm25s():
    documents = random_corpus(random.Random(1), 12)
    reference = bm25s.BM25(method="lucene")
    reference.index(documents, show_progress=False)
    query = ["w4", "w8", "zzz"]
    assert bm25_scores(query, documents).tolist() == pytest.approx(
        reference.get_scores(reference.get_tokens_ids(query)).tolist(), rel=1e-6)
    assert bm25_scores([], documents).tolist() == [0.0] * 12
    assert bm25_scores(["w1"], [[], []]).tolist() == [0.0, 0.0]


def test_file_search_follows_the_tree_from_commit_to_commit(make_repo):
    repo = make_repo()
    first = repo.commit("start", {"src/parser.py": "def parse_tokens(tokens):\n    return tokens\n",
                                  "src/render.py": "def render_html(page):\n    return page\n",
                                  "logo.png": b"\x89PNG\0\0binary"})
    second = repo.commit("more", {"src/render.py": "def render_markdown(page):\n    return page\n",
                                  "src/parser.py": None, "docs/guide.md": "How to parse tokens.\n"})
    with FileSearch(repo.path) as code:
        code.move_to(first)
        assert set(code.blobs) == {"src/parser.py", "src/render.py", "logo.png"}
        assert "logo.png" not in code.index  # binary: in the tree, not in the search
        hits = code.search(code_words("parse the tokens"))
        assert max(hits, key=hits.get) == "src/parser.py" and "src/render.py" not in hits
        code.move_to(second)  # git diff-tree from the tree held
        assert set(code.blobs) == {"src/render.py", "docs/guide.md", "logo.png"}
        hits = code.search(code_words("parse the tokens"))
        assert set(hits) == {"docs/guide.md"}
        assert set(code.search(code_words("render markdown"))) == {"src/render.py"}
        assert code.read("docs/guide.md") == b"How to parse tokens.\n"
        # The path's words count `path_weight` times: a file named for the task wins over one that mentions it.
        code.move_to(first)
        assert set(code.blobs) == {"src/parser.py", "src/render.py", "logo.png"}
        assert code.search(["render"]) and max(code.search(["html"]), key=code.search(["html"]).get) == "src/render.py"
        code.move_to(None)
        assert code.blobs == {} and len(code.index) == 0
        with pytest.raises(UserError, match="has no commit"):
            code.move_to(first)
            code.move_to("1" * 40)
