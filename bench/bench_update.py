"""Benchmark `pipeline.py --update` against a full rerun, in the same run, on a real history.

    python bench/bench_update.py                                        # ../shared/data/repos/fd.bundle
    python bench/bench_update.py ../shared/data/repos/axum.bundle --new-commits 50 --steps 150
    python bench/bench_update.py --work /tmp/bench-update --keep        # keep the clone and the outputs
    python bench/bench_update.py --shipped    # the shipped config.yaml's model and training budget (slower)
    python bench/bench_update.py --shipped --work W --keep                       # once, then other update settings:
    python bench/bench_update.py --shipped --work W --keep --reuse --set train_model.update_max_steps=30

1. The history is cloned, and its refs are moved back so that the scraper sees it without its last
   `--new-commits` commits (the scraper's own order; a ref whose tip is cut moves to its newest kept
   ancestor, a tag on a cut commit goes, a kept commit no ref reaches any more gets a ref of its own).
2. Base: the full pipeline on that history (`pipeline.py`, every stage), timed.
3. The refs are put back (the full history) and the base output folder copied twice:
   - update: `pipeline.py --update` (the update under test);
   - full rerun: `pipeline.py --no-update` (what a changed history cost before: every stage again,
     the tokenizer retrained and the model trained from zero with the base's budget; the code index
     is incremental in both, as it is in any rerun of the same output folder).
   Both are timed, wall and CPU seconds of the process tree (less sensitive to a loaded machine).
4. Four losses (mean per target token, and per byte of target text, which does not depend on the
   tokenizer: the full rerun trained its own), each on the same examples for the models compared:
   - on the new commits (the targets among them): the updated model vs the full rerun's model
     (trained from scratch on the full history with the base's budget); target: within 5% or better;
   - on the base's test split: the updated model vs the base model; target: not worse by over 5%.

`--reuse` (with the `--work` folder of an earlier run, kept): the base and the full rerun of that run stay, and
only the update runs again, with `--set SECTION.KEY=VALUE` overrides (e.g. the update's training size); its
ratios are against the earlier run's full rerun, and its losses against that rerun's model.

Every process runs with the same bench profile (a small CPU scratch model: `--steps` optimizer steps
for a full training, `--update-steps` for the update, no time budget, so that both do the same work
on a loaded machine; `--profile` prints it). Prints the figures and the ratios against the targets.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]

from repo2model.core.artifacts import iter_commit_dicts  # noqa: E402
from repo2model.language.encoding import decode_ids  # noqa: E402
from repo2model.language.examples import IGNORE_INDEX, ExampleSet  # noqa: E402
from repo2model.git.commands import git  # noqa: E402
from repo2model.training.models import load_trained_model  # noqa: E402
from repo2model.git.refs import Repository, list_commits, select_refs  # noqa: E402
from repo2model.git.scraping import ScraperConfig  # noqa: E402

DEFAULT_HISTORY = ROOT.parent / "shared" / "data" / "repos" / "fd.bundle"
TIME_TARGET = 0.15
LOSS_TARGET = 1.05

PROFILE = """\
pipeline:
  output_dir: {out}
git_scraper:
  repo: {repo}
tokenizer:
  vocab_size: 4000
dataset_builder:
  context_window: 256
  target_window: 128
train_model:
  hidden_size: 128
  num_layers: 2
  num_heads: 4
  intermediate_size: 344
  device: cpu
  precision: fp32
  max_steps: {steps}
  warmup_steps: 10
  update_max_steps: {update_steps}
  update_warmup_steps: 2
  max_minutes: null
  eval_every: 50
  save_every: 50
evaluate:
  max_examples: {eval_examples}
predict:
  max_new_tokens: 64
"""


# ------------------------------------------------------------------ the history without its last commits


def refs_of(repo: Path) -> dict[str, tuple[str, str]]:
    """refname -> (object it points to, the commit it peels to), symbolic refs left out."""
    refs = {}
    for line in git(repo, "for-each-ref", "--format=%(refname) %(objectname) %(*objectname) %(symref)").splitlines():
        name, target, peeled, symref = (line.split(" ") + ["", "", ""])[:4]
        if not symref:
            refs[name] = (target, peeled or target)
    return refs


def scraper_order(repo: Path) -> list[str]:
    """Every commit the scraper takes with its default settings, in its order (parents first)."""
    cfg = ScraperConfig(repo=repo)
    opened = Repository.open(repo)
    return list_commits(opened, select_refs(opened, cfg).scrape, cfg)


def cut_history(repo: Path, count: int) -> tuple[list[str], dict[str, tuple[str, str]]]:
    """Move the refs so that the scraper sees the history without its last `count` commits; returns the
    commits left out and the refs of the full history (to put back)."""
    full = refs_of(repo)
    order = scraper_order(repo)
    gone = set(order[-count:])
    for name, (_, commit) in full.items():
        if commit not in gone:
            continue
        kept = next((c for c in git(repo, "rev-list", "--topo-order", commit).split() if c not in gone), None)
        if name.startswith("refs/tags/") or kept is None:
            git(repo, "update-ref", "-d", name)
        else:
            git(repo, "update-ref", name, kept)
    reachable = set(git(repo, "rev-list", "--all").split())
    missing = [c for c in order[:-count] if c not in reachable]
    while missing:  # kept commits only a cut branch reached: a ref of their own
        head = missing[-1]
        git(repo, "update-ref", f"refs/heads/bench-kept-{head[:12]}", head)
        reachable |= set(git(repo, "rev-list", head).split())
        missing = [c for c in missing if c not in reachable]
    return order[-count:], full


def restore_history(repo: Path, full: dict[str, tuple[str, str]]) -> None:
    for name in refs_of(repo):
        if name not in full:
            git(repo, "update-ref", "-d", name)
    for name, (target, _) in full.items():
        git(repo, "update-ref", name, target)


# ------------------------------------------------------------------ runs


def run_pipeline(config: Path, *args: str) -> dict:
    """`pipeline.py --config <config> <args>` in its own process: wall and CPU seconds, per-stage seconds."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "pipeline.py"), "--config", str(config), *args],
                          cwd=config.parent, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"pipeline.py {' '.join(args)} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    out = Path(next(line.split("output_dir: ", 1)[1] for line in config.read_text().splitlines() if "output_dir:" in line))
    results = json.loads((out / "pipeline_results.json").read_text())
    return {"wall": wall, "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "stages": {name: s.get("seconds", 0.0) for name, s in results["stages"].items()},
            "update": results.get("update"), "log": proc.stderr}


# --shipped: the shipped config.yaml's settings (its model, steps, time budget and update steps), only the
# folders and the device set: what a user's CPU update costs against the user's full rerun.
SHIPPED_PROFILE = """\
pipeline:
  output_dir: {out}
git_scraper:
  repo: {repo}
train_model:
  device: cpu
"""


def profile_text(args: argparse.Namespace, out: str, repo: str) -> str:
    if args.shipped:
        return SHIPPED_PROFILE.format(out=out, repo=repo)
    return PROFILE.format(out=out, repo=repo, steps=args.steps, update_steps=args.update_steps,
                          eval_examples=args.eval_examples)


def write_config(work: Path, name: str, repo: Path, args: argparse.Namespace) -> Path:
    config = work / f"{name}.yaml"
    config.write_text(profile_text(args, str(work / name), str(repo)), encoding="utf-8")
    return config


# ------------------------------------------------------------------ losses


@torch.no_grad()
def losses(model_dir: Path, examples: ExampleSet, commits: set[str]) -> dict:
    """Mean loss per target token and per target byte of `model_dir` on the examples of `commits`."""
    model, tokenizer = load_trained_model(model_dir)
    nats, tokens, text_bytes, count = 0.0, 0, 0, 0
    for i, commit in enumerate(examples.commits):
        if commit not in commits:
            continue
        ids, labels = examples.ids(i).long()[None], examples.labels(i)[None]
        logits = model(input_ids=ids).logits[:, :-1].float()
        targets = labels[:, 1:]
        nats += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                                      ignore_index=IGNORE_INDEX, reduction="sum"))
        tokens += int((targets != IGNORE_INDEX).sum())
        text_bytes += len(decode_ids(tokenizer, ids[0, int(examples.target_starts[i]):].tolist()).encode("utf-8"))
        count += 1
    return {"per_token": nats / max(tokens, 1), "per_byte": nats / max(text_bytes, 1), "examples": count}


def examples_of(out: Path) -> ExampleSet:
    """Every example of an output folder's three splits, as one set (commit -> example)."""
    sets = [ExampleSet.load(out / f"training_data_{split}.pt") for split in ("train", "val", "test")]
    ids = torch.cat([s.input_ids for s in sets])
    offsets, starts, commits, stamps, base = [torch.zeros(1, dtype=torch.int64)], [], [], [], 0
    for s in sets:
        offsets.append(s.offsets[1:] + base)
        base += int(s.offsets[-1])
        starts.append(s.target_starts)
        commits += list(s.commits)
        stamps += list(s.timestamps)
    return ExampleSet(ids, torch.cat(offsets), torch.cat(starts), commits, stamps, {})


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("history", type=Path, nargs="?", default=DEFAULT_HISTORY, help="a bundle or repository")
    parser.add_argument("--new-commits", type=int, default=50, help="commits the update adds (default 50)")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps of a full training (default 150)")
    parser.add_argument("--update-steps", type=int, default=15, help="optimizer steps of the update (default 15)")
    parser.add_argument("--eval-examples", type=int, default=10, help="evaluate.max_examples (default 10)")
    parser.add_argument("--work", type=Path, help="work folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder")
    parser.add_argument("--profile", action="store_true", help="print the bench profile (config) and exit")
    parser.add_argument("--reuse", action="store_true", help="keep the base and the full rerun of the --work folder "
                        "(an earlier run with --keep) and run only the update again")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a config override for the update (pipeline.py --set), repeatable")
    parser.add_argument("--shipped", action="store_true", help="the shipped config.yaml's training settings (model, "
                        "max_steps, max_minutes, update_max_steps) instead of the bench's tiny model; slower")
    args = parser.parse_args(argv)
    if args.profile:
        print(profile_text(args, "<out>", "<repo>"))
        return 0
    work = (args.work or Path(tempfile.mkdtemp(prefix="bench-update-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        return bench(args, work)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def bench(args: argparse.Namespace, work: Path) -> int:
    if args.reuse:
        return bench_again(args, work)
    repo = work / "repo"
    if repo.exists():
        shutil.rmtree(repo)
    if args.history.is_dir():
        subprocess.run(["git", "clone", "-q", "--no-local", str(args.history), str(repo)], check=True)
    else:
        subprocess.run(["git", "clone", "-q", str(args.history), str(repo)], check=True)
    new, full_refs = cut_history(repo, args.new_commits)
    for name in ("base", "update", "rerun"):
        shutil.rmtree(work / name, ignore_errors=True)
    configs = {name: write_config(work, name, repo, args) for name in ("base", "update", "rerun")}

    print(f"{args.history.name}: base = the history without its last {len(new)} commits "
          + ("(the shipped config's training settings; " if args.shipped else
             f"(full training {args.steps} steps, update {args.update_steps} steps; ")
          + "machine shared: compare ratios)",
          flush=True)
    base = run_pipeline(configs["base"])
    print(f"  base, full pipeline:  {base['wall']:7.1f} s wall, {base['cpu']:7.1f} s CPU", flush=True)
    restore_history(repo, full_refs)
    shutil.copytree(work / "base", work / "update", symlinks=True)
    shutil.copytree(work / "base", work / "rerun", symlinks=True)

    update = run_pipeline(configs["update"], "--update", *overrides(args))
    rerun = run_pipeline(configs["rerun"], "--no-update")
    return report(work, new, base, update, rerun)


def overrides(args: argparse.Namespace) -> list[str]:
    return [item for value in args.set for item in ("--set", value)]


def bench_again(args: argparse.Namespace, work: Path) -> int:
    """--reuse: only the update again, against the kept base and full rerun of an earlier run in `work`."""
    earlier = work / "figures.json"
    if not earlier.is_file() or not (work / "base").is_dir() or not (work / "rerun").is_dir():
        print(f"bench_update: --reuse needs {work} from an earlier run with --keep (figures.json, base/, rerun/)",
              file=sys.stderr)
        return 2
    figures = json.loads(earlier.read_text(encoding="utf-8"))
    shutil.rmtree(work / "update", ignore_errors=True)
    shutil.copytree(work / "base", work / "update", symlinks=True)
    before = {c["hash"] for c in iter_commit_dicts(work / "base" / "commits.json")}
    new = [c["hash"] for c in iter_commit_dicts(work / "rerun" / "commits.json") if c["hash"] not in before]
    print(f"{args.history.name}: the update again with {' '.join(args.set) or 'no override'} (base and full rerun "
          f"kept from {earlier})", flush=True)
    update = run_pipeline(work / "update.yaml", "--update", *overrides(args))
    return report(work, new, figures["base"], update, figures["rerun"], again=args.set or ["none"])


def report(work: Path, new: list[str], base: dict, update: dict, rerun: dict, again: list[str] | None = None) -> int:
    """Print the figures and write figures.json (--reuse: figures-<overrides>.json beside it)."""
    summary = update["update"] or {}
    print(f"  update (--update):    {update['wall']:7.1f} s wall, {update['cpu']:7.1f} s CPU   "
          f"({summary.get('new_commits')} new commits, {summary.get('removed_commits')} removed, "
          f"{summary.get('steps')} steps)")
    print(f"  full rerun:           {rerun['wall']:7.1f} s wall, {rerun['cpu']:7.1f} s CPU")
    print("  per stage (s)         " + " ".join(f"{name[:10]:>10}" for name in rerun["stages"]))
    for label, result in (("update", update), ("full rerun", rerun)):
        print(f"    {label:19} " + " ".join(f"{result['stages'].get(n, 0.0):10.1f}" for n in rerun["stages"]))
    wall_ratio, cpu_ratio = update["wall"] / rerun["wall"], update["cpu"] / rerun["cpu"]
    print(f"  update / full rerun: wall {wall_ratio:.1%}, CPU {cpu_ratio:.1%} (target <= {TIME_TARGET:.0%}: "
          f"{'met' if wall_ratio <= TIME_TARGET else 'MISSED'} by wall, {'met' if cpu_ratio <= TIME_TARGET else 'MISSED'} by CPU)")

    base_test = ExampleSet.load(work / "base" / "training_data_test.pt")
    update_examples, rerun_examples = examples_of(work / "update"), examples_of(work / "rerun")
    trained = set(ExampleSet.load(work / "update" / "training_data_train.pt").meta.get("trained_commits") or ())
    new_set, old_test = set(new), set(base_test.commits)
    figures = {
        "new_updated": losses(work / "update" / "model", update_examples, new_set),
        "new_scratch": losses(work / "rerun" / "model", rerun_examples, new_set),
        "old_before": losses(work / "base" / "model", base_test, old_test),
        "old_after": losses(work / "update" / "model", base_test, old_test),
    }
    print(f"  losses (nats per target token | per target byte); new commits: {figures['new_updated']['examples']} "
          f"targets, base test split: {figures['old_before']['examples']} targets "
          f"({len(old_test & trained)} of them trained on by the update)")
    for key, label in (("new_updated", "new commits, updated model"), ("new_scratch", "new commits, full rerun's model"),
                       ("old_before", "base test split, before update"), ("old_after", "base test split, after update")):
        print(f"    {label:34} {figures[key]['per_token']:.4f} | {figures[key]['per_byte']:.4f}")
    new_ratio = figures["new_updated"]["per_byte"] / figures["new_scratch"]["per_byte"]
    old_ratio = figures["old_after"]["per_token"] / figures["old_before"]["per_token"]
    print(f"  new commits: updated / scratch = {new_ratio:.3f} per byte "
          f"({figures['new_updated']['per_token'] / figures['new_scratch']['per_token']:.3f} per token, other tokenizers) "
          f"(target <= {LOSS_TARGET}: {'met' if new_ratio <= LOSS_TARGET else 'MISSED'})")
    print(f"  base test split: after / before = {old_ratio:.3f} (target <= {LOSS_TARGET}: "
          f"{'met' if old_ratio <= LOSS_TARGET else 'MISSED'})")
    if again is not None:  # --reuse: the earlier run's figures stay; this update's go beside them
        name = "figures-" + "-".join(v.replace("=", "_").replace(".", "_") for v in again) + ".json"
        (work / name).write_text(json.dumps({"update": {k: update[k] for k in ("wall", "cpu", "stages", "update")},
                                             "ratios": {"wall": wall_ratio, "cpu": cpu_ratio, "new_loss": new_ratio,
                                                        "old_loss": old_ratio}, "losses": figures}, indent=2),
                                 encoding="utf-8")
        return 0
    (work / "figures.json").write_text(json.dumps({
        "new_commits": len(new), "base": {k: base[k] for k in ("wall", "cpu", "stages")},
        "update": {k: update[k] for k in ("wall", "cpu", "stages", "update")},
        "rerun": {k: rerun[k] for k in ("wall", "cpu", "stages")},
        "ratios": {"wall": wall_ratio, "cpu": cpu_ratio, "new_loss": new_ratio, "old_loss": old_ratio},
        "losses": figures}, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
