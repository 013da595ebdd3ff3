"""An evaluation's report: evaluate.py's evaluation.json as markdown tables (evaluation.md) and a chart
(evaluation.png).

    text = markdown_report(result)          # every metric of every predictor, best in bold; per commit size;
                                            # where each predictor loses; the ranker's feature importances
    write_chart(result["metrics"], path)    # every predictor side by side
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

from repo2model.core.artifacts import atomic_path
from repo2model.ranking.metrics import fmt
from repo2model.ranking.ranker import BASE_SCORE

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the file-only backend)

METRIC_ROWS = ("recall@1", "recall@5", "recall@10", "mrr", "change_type_acc", "module_acc", "symbol_recall")


def markdown_report(result: dict) -> str:
    metrics = result["metrics"]
    names = list(metrics)
    lines = [
        f"# Evaluation on {result['targets']} target commits ({result['split']} split)",
        "",
        f"Mined history: {result['mined_history']}; code search: {'on' if result['code_search'] else 'off'}. "
        "Higher is better; best of each row in bold.",
        "",
        "| metric | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for key in METRIC_ROWS:
        lines.append(f"| {key} | " + " | ".join(bold_best([metrics[n].get(key) for n in names])) + " |")
    lines.append("| commits | " + " | ".join(str(metrics[n]["commits"]) for n in names) + " |")
    if "model" in metrics:
        model = metrics["model"]
        lines.append("| target loss (nats/token) | " + " | ".join(fmt(model.get("loss")) if n == "model" else ""
                                                                 for n in names) + " |")
    lines += lm_choice_lines((result.get("ranker") or {}).get("lm_choice"))
    lines += prior_lines(result.get("ranker") or {})
    lines += ["", "## Recall by commit size (changed files)", "",
              "recall@5 / recall@10 per bucket; the commits of each bucket in brackets.", "",
              "| predictor | " + " | ".join(bucket_names(result)) + " |", "|---|" + "---|" * len(bucket_names(result))]
    for name in names:
        cells = []
        for bucket in bucket_names(result):
            figures = result["by_size"].get(name, {}).get(bucket)
            cells.append(f"{fmt(figures['recall@5'])} / {fmt(figures['recall@10'])} ({figures['commits']})"
                         if figures else "")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "## Where each predictor loses", ""] + where_each_loses(result)
    lines += importance_table(result.get("ranker"))
    info = result.get("model") or {}
    if info.get("candidates"):
        lines += ["", f"Malformed generations: {info['malformed_candidates']} of {info['candidates']} candidates."]
    lines += [
        "",
        "recall@k = |top-k ∩ changed| / min(k, |changed|); mrr = 1 / rank of the first changed file; change_type_acc "
        "pools the changed files a predictor named in its top 10; module_acc: the first predicted module is one of "
        "the commit's modules; symbol_recall = |predicted ∩ changed symbols| / |changed symbols|.",
        "",
    ]
    return "\n".join(lines)


def lm_choice_lines(choice: dict | None) -> list[str]:
    """Which of the two rankers predictions use, and the held-out val figures that chose it ([] without both)."""
    if not choice:
        return []
    used = "ranker_lm" if choice["used"] else "ranker"
    lm, plain = choice["ranker_lm"], choice["ranker"]
    line = (f"Predictions rank with **{used}**: on {choice['val_targets']} val targets, each scored by a ranker_lm "
            f"fitted on the other half of val, ranker_lm's recall@5 / MRR is {fmt(lm.get('recall@5'))} / "
            f"{fmt(lm.get('mrr'))} against ranker's {fmt(plain.get('recall@5'))} / {fmt(plain.get('mrr'))}.")
    return ["", line]


def prior_lines(ranker: dict) -> list[str]:
    """What the prior did on this history: the ranker's test figures against the same ranker fitted from nothing
    on the same rows (train_ranker's ablation; [] without a prior)."""
    prior, ablation = ranker.get("prior"), ranker.get("prior_ablation")
    if not prior or not ablation:
        return []
    with_it, without = ablation["ranker"], ablation["ranker_without_prior"]
    gain = (with_it.get("recall@5") or 0.0) - (without.get("recall@5") or 0.0)
    learned = ", ".join(prior.get("histories") or {}) or "other histories"
    line = (f"The prior ({prior['trees']} trees learned from {learned}) {'gained' if gain >= 0 else 'lost'} "
            f"{abs(gain):.3f} recall@5 on train_ranker's {ablation['targets']} test targets: the ranker's recall@5 / "
            f"MRR is {fmt(with_it.get('recall@5'))} / {fmt(with_it.get('mrr'))}, and {fmt(without.get('recall@5'))} / "
            f"{fmt(without.get('mrr'))} fitted from nothing on the same rows (train_ranker.prior: off).")
    return ["", line]


def bold_best(values: list) -> list[str]:
    present = [v for v in values if v is not None]
    best = max(present) if present else None
    bold = len(present) > 1 and min(present) < best  # no bold when every predictor ties
    return [f"**{fmt(v)}**" if bold and v == best else fmt(v) for v in values]


def bucket_names(result: dict) -> list[str]:
    names: dict[str, None] = {}
    for buckets in result["by_size"].values():
        names.update(dict.fromkeys(buckets))
    order = ["1", "2-3", "4-10", "11-30", "31+"]
    return [b for b in order if b in names]


def where_each_loses(result: dict) -> list[str]:
    """For each predictor: which predictor beats it on which metric, and on which commit sizes (recall@10)."""
    metrics = result["metrics"]
    lines = []
    for name, mine in metrics.items():
        behind: dict[str, list[str]] = {}
        for key in METRIC_ROWS:
            rivals = {n: m[key] for n, m in metrics.items() if m.get(key) is not None}
            if mine.get(key) is not None and max(rivals.values()) > mine[key]:
                behind.setdefault(max(rivals, key=rivals.get), []).append(key)
        sizes: dict[str, list[str]] = {}
        for bucket, figures in result["by_size"].get(name, {}).items():
            rivals = {n: b[bucket]["recall@10"] for n, b in result["by_size"].items()
                      if bucket in b and b[bucket]["recall@10"] is not None}
            if figures["recall@10"] is not None and max(rivals.values()) > figures["recall@10"]:
                sizes.setdefault(max(rivals, key=rivals.get), []).append(bucket)
        parts = [f"behind {rival} on {', '.join(keys)}" for rival, keys in behind.items()]
        parts += [f"on commits of {', '.join(buckets)} files behind {rival} (recall@10)"
                  for rival, buckets in sizes.items()]
        lines.append(f"- **{name}**: "
                     + ("; ".join(parts) if parts else "nowhere: best or tied on every metric and size"))
    return lines


def write_chart(metrics: dict, path: Path) -> Path:
    names = list(metrics)
    keys = [k for k in METRIC_ROWS if any(metrics[n].get(k) is not None for n in names)]
    width = 0.8 / max(1, len(names))
    fig, ax = plt.subplots(figsize=(12, 5), dpi=100)
    for j, name in enumerate(names):
        values = [metrics[name].get(k) or 0.0 for k in keys]
        xs = [i + (j - (len(names) - 1) / 2) * width for i in range(len(keys))]
        ax.bar(xs, values, width, label=name)
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels(keys)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("score (higher is better)")
    targets = metrics[names[0]]["commits"] if names else 0
    ax.set_title(f"Every predictor on {targets} target commits")
    ax.legend(ncol=min(9, max(1, len(names))), fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
    return path




def importance_table(ranker: dict | None) -> list[str]:
    """The ranker's (and the LM ranker's) feature importances as a markdown section; [] without a ranker."""
    if not (ranker and ranker.get("feature_importance")):
        return []
    lines = ["", "## The ranker's feature importances (share of split gain)", "",
             "| feature | ranker |" + (" ranker_lm |" if ranker.get("feature_importance_lm") else ""),
             "|---|---|" + ("---|" if ranker.get("feature_importance_lm") else "")]
    lm = ranker.get("feature_importance_lm") or {}
    # The top 20 of each ranker, and the language model's own features whatever their share.
    shown = list(ranker["feature_importance"])[:20] + list(lm)[:20]
    shown += [f for f in lm if f.startswith("lm_") or f == BASE_SCORE]
    for feature in dict.fromkeys(shown):
        cell = f" {lm.get(feature, 0.0):.3f} |" if lm else ""
        lines.append(f"| {feature} | {ranker['feature_importance'].get(feature, 0.0):.3f} |{cell}")
    return lines
