"""The embedding model in ONNX Runtime: exported once from the sentence-transformers weights, int8-quantized,
checked against torch, and cached by the weights' digest.

    path = onnx_model(folder, quantized=True)       # <cache>/embedders/<digest>/model-int8.onnx (made once)
    session = open_session(path, num_threads)
    vectors = session_embed(session, input_ids, attention_mask)    # float32 [n, dim], rows L2-normalised

The graph is the model, mean pooling over the attention mask and the L2 normalisation: the same vectors as
repo2model.retrieval.embedding's torch path. Quantization is ONNX Runtime's dynamic int8 of the MatMul weights,
per output channel (per-tensor lost too much: cosine 0.94 against torch on code units, per-channel 0.993); the
activations are quantized per batch at run time. A new export is checked on fixed texts of code and prose
before it is kept: each vector's cosine with torch's at least `MIN_COSINE`, their mean at least
`MIN_MEAN_COSINE`, else a one-line error.

The cache folder: $REPO2MODEL_CACHE, else $XDG_CACHE_HOME/repo2model, else ~/.cache/repo2model. The key is a
digest of the model folder's config.json and weights and of `RECIPE` (how the graph is made), so that other
weights, or another recipe, never meet an old export.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from repo2model.core.artifacts import atomic_path, write_json
from repo2model.core.errors import UserError

log = logging.getLogger("index")

RECIPE = "legacy-export opset17 eager-attention mean-pool l2; int8 dynamic per-channel MatMul; v1"
MIN_COSINE, MIN_MEAN_COSINE = 0.97, 0.985  # against torch's vectors, per text and on average: a guard that refuses
# a broken export (a wrong graph or quantization gives far lower cosines), not the quality figure. That one is
# measured on real units: 300 30-line pieces of axum in batches of 32 (onnxruntime 1.32, transformers 5.25) gave a
# mean of 0.991, lowest 0.983 (0.993 / 0.986 in an earlier environment); `bench/bench_context.py` checks that the
# context recall stays within 0.01 of torch's. The activations are quantized per batch, so a text's cosine depends
# on the texts beside it; a one-character text is the most sensitive (0.978). On the first five check texts the mean
# fell from above 0.99 to 0.989 in a newer environment (the same with onnxruntime 1.26 and 1.31): a 0.99 bar on
# a handful of texts refused a sound export, and with it every index build.
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
CHECK_TEXTS = [
    ("src/routing/mod.rs\nfunction route\npub fn route(path: &str, method_router: MethodRouter) -> Self {\n"
     "    self.inner.route(path, method_router)\n}"),
    ("src/extract/query.rs\nstruct Query\n/// Extractor that deserializes query strings into some type.\n"
     "#[derive(Debug, Clone, Copy, Default)]\npub struct Query<T>(pub T);"),
    ("src/error.rs\nimpl Error\nimpl std::fmt::Display for Error {\n    fn fmt(&self, f: &mut fmt::Formatter<'_>)"
     " -> fmt::Result {\n        write!(f, \"{}\", self.inner)\n    }\n}"),
    ("crates/market/src/dispute.rs\nfunction open_dispute\npub async fn open_dispute(db: &PgPool, trade_id: Uuid,"
     " reason: String) -> Result<Dispute, MarketError> {\n    let trade = Trade::load(db, trade_id).await?;\n"
     "    trade.ensure_settled()?;\n    Dispute::insert(db, trade_id, reason).await\n}"),
    "Cargo.toml\nconfig workspace\n[workspace]\nmembers = [\"crates/*\"]\nresolver = \"2\"\n\n[workspace.dependencies]"
    "\ntokio = { version = \"1\", features = [\"full\"] }",
    "README.md\ndoc Install > From source\nClone the repository and run `cargo install --path .` to build it.",
    ("docs/usage.md\ndoc Usage > Filters\nUse `--type f` to list only files and `--extension rs` to keep Rust"
     " sources; patterns are regular expressions unless `--glob` is given."),
    ("tests/test_cli.py\ntest test_help\ndef test_help(runner):\n    result = runner.invoke(cli, ['--help'])\n"
     "    assert result.exit_code == 0\n    assert 'Usage' in result.output"),
    ("src/click/core.py\nmethod Context.invoke\ndef invoke(self, callback, *args, **kwargs):\n"
     "    with augment_usage_errors(self):\n        return callback(*args, **kwargs)"),
    ("web/src/api.ts\nfunction fetchOrders\nexport async function fetchOrders(token: string): Promise<Order[]> {\n"
     "  const res = await fetch('/api/orders', { headers: { Authorization: `Bearer ${token}` } });\n"
     "  return res.json();\n}"),
    ".github/workflows/ci.yml\nconfig jobs.test\njobs:\n  test:\n    runs-on: ubuntu-latest\n    steps:\n"
    "      - uses: actions/checkout@v4\n      - run: cargo test --workspace",
    "scripts/release.sh\nscript\nset -euo pipefail\nversion=\"$1\"\ngit tag -a \"v$version\" -m \"release $version\"",
    "Add a retry to the scraper when git is busy",
    "implement dispute resolution for the energy market",
    "fix: handle a missing trailing slash in nested routers",
    "x",
]


def cache_root() -> Path:
    if os.environ.get("REPO2MODEL_CACHE"):
        return Path(os.environ["REPO2MODEL_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "repo2model"


def weights_digest(folder: Path) -> str:
    """A digest of what the vectors depend on in a model folder: config.json and the weights."""
    digest = hashlib.sha256()
    weights = [folder / name for name in WEIGHT_FILES if (folder / name).is_file()]
    if not weights:
        raise UserError(f"{folder}: no model.safetensors or pytorch_model.bin: not a model folder with weights")
    for path in [folder / "config.json", weights[0]]:
        digest.update(path.name.encode())
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def onnx_model(folder: Path, quantized: bool, digest: str | None = None) -> Path:
    """The cached ONNX file of the model in `folder` (exported, quantized and checked on first use)."""
    digest = digest or weights_digest(folder)
    key = hashlib.sha256(f"{digest}\0{RECIPE}".encode()).hexdigest()[:24]
    target = cache_root() / "embedders" / key / ("model-int8.onnx" if quantized else "model.onnx")
    if target.is_file():
        return target
    log.info("index: exporting the embedding model to ONNX%s (once per model: %s)",
             " and quantizing it to int8" if quantized else "", target.parent)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        plain = tmp.with_name(tmp.name + ".fp32.onnx")
        try:
            export(folder, plain)
            if quantized:
                quantize(plain, tmp)
            else:
                plain.replace(tmp)
            cosines = check_against_torch(folder, tmp)
        finally:
            plain.unlink(missing_ok=True)
    write_json(target.parent / f"{target.stem}.json", {"model_folder": str(folder), "weights_digest": digest,
                                                        "recipe": RECIPE, "check_cosines": cosines})
    return target


class _Pooled:
    """The model with mean pooling and L2 normalisation, as one torch module (made lazily: torch imports)."""

    @staticmethod
    def make(model):
        import torch

        class Pooled(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask):
                hidden = self.inner(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
                return torch.nn.functional.normalize(pooled, dim=-1)

        return Pooled(model).eval()


def export(folder: Path, path: Path) -> None:
    """torch -> ONNX with dynamic batch and length. The TorchScript exporter (`dynamo=False`): the torch.export
    one needs onnxscript and wrote a graph that ONNX Runtime refused (a duplicated output name), measured with
    torch 2.13; eager attention gives a plain graph (the SDPA path traces into data-dependent mask code)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    example = tokenizer(["fn main() {}", "a longer second text, padded"], padding=True, return_tensors="pt")
    axes = {0: "batch", 1: "tokens"}
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracer notes; the result is checked
        torch.onnx.export(_Pooled.make(model), (example["input_ids"], example["attention_mask"]), str(path),
                          dynamo=False, input_names=["input_ids", "attention_mask"], output_names=["embedding"],
                          dynamic_axes={"input_ids": axes, "attention_mask": axes, "embedding": {0: "batch"}},
                          opset_version=17)


def quantize(source: Path, target: Path) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quiet = logging.getLogger()  # the quantizer logs a pre-processing hint on the root logger
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
    finally:
        quiet.setLevel(level)


def check_against_torch(folder: Path, path: Path) -> list[float]:
    """Cosine of each CHECK_TEXTS vector with torch's; UserError when one is below MIN_COSINE or their mean below
    MIN_MEAN_COSINE."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(CHECK_TEXTS, padding=True, truncation=True, max_length=128, return_tensors="np")
    with torch.inference_mode():
        model = _Pooled.make(AutoModel.from_pretrained(folder))
        expected = model(torch.from_numpy(encoded["input_ids"]), torch.from_numpy(encoded["attention_mask"])).numpy()
    got = session_embed(open_session(path, 1), encoded["input_ids"], encoded["attention_mask"])
    cosines = [round(float(c), 5) for c in (got * expected).sum(axis=1)]
    if min(cosines) < MIN_COSINE or np.mean(cosines) < MIN_MEAN_COSINE:
        raise UserError(f"{folder}: the ONNX export's vectors differ from torch's (cosine {min(cosines):.3f} at "
                        f"least, {np.mean(cosines):.3f} on average): set index.backend: torch")
    return cosines


def open_session(path: Path, num_threads: int | None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = num_threads or 0  # 0: one per core
    options.inter_op_num_threads = 1
    # Idle threads sleep instead of spinning: on a shared machine spinning costs others' time for nothing.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def session_embed(session, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    return session.run(None, {"input_ids": input_ids.astype(np.int64),
                              "attention_mask": attention_mask.astype(np.int64)})[0]
