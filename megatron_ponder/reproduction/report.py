"""The reproduction's table (Markdown and JSON) and its two plots (validation loss against
training tokens and against training FLOPs)."""

import math
import os
from typing import List, Optional, Sequence

COLUMNS = ("arm", "lr", "parameters", "training tokens", "training FLOPs",
           "inference FLOPs/token", "wall time", "valid loss", "valid ppl", "held-out loss",
           "held-out ppl")


def _si(value: float) -> str:
    for factor, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"),
                           (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.3g}{suffix}"
    return f"{value:.3g}"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(round(seconds % 60)):02d}s"


def table_rows(results: Sequence[dict]) -> List[List[str]]:
    rows = []
    for result in results:
        held_out = result.get("heldout_loss")
        rows.append([
            result["arm"], f"{result['lr']:g}" if "lr" in result else "-",
            _si(result["parameters"]), _si(result["training_tokens"]),
            _si(result["training_flops"]), _si(result["inference_flops_per_token"]),
            _minutes(result["train_seconds"]), f"{result['valid_loss']:.4f}",
            f"{math.exp(result['valid_loss']):.2f}",
            "-" if held_out is None else f"{held_out:.4f}",
            "-" if held_out is None else f"{math.exp(held_out):.2f}",
        ])
    return rows


def at_best_rates(results: Sequence[dict]) -> List[dict]:
    """One row per arm family (an arm and its ``-lr<rate>`` runs): the run whose final
    validation loss is lowest, under the family's name, so that every comparison sets arms
    at their own best learning rates. Order: each family's first appearance."""
    best = {}
    for result in results:
        family = result.get("family", result["arm"])
        if family not in best or result["valid_loss"] < best[family]["valid_loss"]:
            best[family] = result
    return [dict(result, arm=family) for family, result in best.items()]


def learning_rate_table(results: Sequence[dict]) -> Optional[str]:
    """Markdown: final validation loss of every family run at more than one rate, one column
    per rate, the best of each row in bold; None when no family was swept."""
    losses = {}
    for result in results:
        if "lr" in result:
            losses.setdefault(result.get("family", result["arm"]), {})[result["lr"]] = \
                result["valid_loss"]
    swept = {family: by_rate for family, by_rate in losses.items() if len(by_rate) > 1}
    if not swept:
        return None
    rates = sorted({rate for by_rate in swept.values() for rate in by_rate})
    lines = ["| arm | " + " | ".join(f"lr {rate:g}" for rate in rates) + " |",
             "|---|" + "---:|" * len(rates)]
    for family, by_rate in swept.items():
        best = min(by_rate.values())
        cells = ["-" if rate not in by_rate else
                 (f"**{by_rate[rate]:.4f}**" if by_rate[rate] == best else f"{by_rate[rate]:.4f}")
                 for rate in rates]
        lines.append(f"| {family} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_table(results: Sequence[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines)


def plain_table(results: Sequence[dict]) -> str:
    rows = [list(COLUMNS)] + table_rows(results)
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths))
                     for row in rows)


def plot_curves(results: Sequence[dict], output_dir: str) -> List[str]:
    """valid_loss_vs_tokens.png and valid_loss_vs_flops.png in ``output_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    styles = {"baseline": "-", "ponderlm2": "-", "cheaper": "--", "continued": ":"}
    paths = []
    for key, label, name in (("tokens", "training tokens", "valid_loss_vs_tokens.png"),
                             ("flops", "training FLOPs (all passes)",
                              "valid_loss_vs_flops.png")):
        fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
        for index, result in enumerate(results):
            # Log x axis: the iteration-0 point (no tokens, no FLOPs) cannot be drawn.
            curve = [point for point in result.get("curve") or [] if point[key] > 0]
            if not curve:
                continue
            xs = [point[key] for point in curve]
            ys = [point["loss"] for point in curve]
            ax.plot(xs, ys, styles.get(result.get("group"), "-"), marker="o", markersize=2.5,
                    color=f"C{index % 10}", linewidth=1.3, label=result["arm"])
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("validation loss (nats/token)")
        ax.grid(True, which="both", alpha=0.3)
        finals = [result["valid_loss"] for result in results]
        if finals:  # zoom on the end of training, where the arms differ
            ax.set_ylim(min(finals) - 0.15, max(finals) + 0.9)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = os.path.join(output_dir, name)
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths


# (claim, arm, compared with): each row says how much lower the arm's final validation loss is.
CLAIMS = (
    ("one thought beats vanilla of the same size", "ponderlm2-k1", "vanilla"),
    ("one thought beats 2x depth (equal inference FLOPs)", "ponderlm2-k1", "vanilla-2x-depth"),
    ("PonderLM-2 beats Pause", "ponderlm2-k1", "pause-k1"),
    ("PonderLM-2 beats Loop", "ponderlm2-k1", "loop-k1"),
    ("PonderLM-2 beats vanilla at equal training FLOPs", "ponderlm2-k1",
     "vanilla-compute-matched"),
    ("2x depth beats vanilla (the experiment's power)", "vanilla-2x-depth", "vanilla"),
    ("two thoughts beat one", "ponderlm2-k2", "ponderlm2-k1"),
    ("continued: PonderLM-2 beats continuing vanilla", "ponderlm2-k1-continued",
     "vanilla-continued"),
    ("cheaper: last 2 passes' gradients only", "ponderlm2-k1-grad2", "ponderlm2-k1"),
    ("cheaper: first half as K=0", "ponderlm2-k1-warmup", "ponderlm2-k1"),
)
SEED_PAIRS = (("vanilla", "vanilla-seed2"), ("ponderlm2-k1", "ponderlm2-k1-seed2"))


def seed_spread(results: Sequence[dict]) -> Optional[float]:
    """The largest final validation loss difference between two seeds of the same arm."""
    by_arm = {result["arm"]: result for result in results}
    spreads = [abs(by_arm[a]["valid_loss"] - by_arm[b]["valid_loss"])
               for a, b in SEED_PAIRS if a in by_arm and b in by_arm]
    return max(spreads) if spreads else None


def claims_table(results: Sequence[dict]) -> str:
    """Markdown: per claim, the loss gain (compared arm minus arm, positive = the arm is
    better), the held-out gain, the training-FLOPs ratio, and whether the gain exceeds twice the
    seed-to-seed spread."""
    by_arm = {result["arm"]: result for result in results}
    spread = seed_spread(results)
    lines = ["| claim | arm vs compared | valid loss gain | held-out gain | training FLOPs "
             "ratio | beyond 2x seed spread |", "|---|---|---|---|---|---|"]
    for claim, arm, other in CLAIMS:
        if arm not in by_arm or other not in by_arm:
            continue
        mine, theirs = by_arm[arm], by_arm[other]
        gain = theirs["valid_loss"] - mine["valid_loss"]
        held_out = ("-" if mine.get("heldout_loss") is None or theirs.get("heldout_loss") is None
                    else f"{theirs['heldout_loss'] - mine['heldout_loss']:+.4f}")
        verdict = "-" if spread is None else ("yes" if abs(gain) > 2 * spread else "no")
        lines.append(f"| {claim} | {arm} vs {other} | {gain:+.4f} | {held_out} | "
                     f"{mine['training_flops'] / theirs['training_flops']:.2f}x | {verdict} |")
    if spread is not None:
        lines.append(f"\nSeed-to-seed spread (largest of vanilla and PonderLM-2 K=1): "
                     f"{spread:.4f} nats.")
    return "\n".join(lines)


GAP_ROWS = (("PonderLM-2 K=1", ("ponderlm2-k1", "ponderlm2-k1-seed2")),
            ("vanilla 2x depth", ("vanilla-2x-depth",)),
            ("Loop K=1", ("loop-k1",)))


def gap_table(results: Sequence[dict]) -> str:
    """Markdown: the in-training validation loss of vanilla minus that of each arm, at every
    evaluation of the recipe's iterations (positive = better than vanilla); arms with two seeds
    (and vanilla) are the mean over their seeds. Empty without vanilla."""
    by_arm = {result["arm"]: result for result in results}

    def mean_curve(names):
        curves = [{point["iteration"]: point["loss"] for point in by_arm[name]["curve"]}
                  for name in names if name in by_arm]
        if not curves:
            return {}
        shared = set.intersection(*(set(curve) for curve in curves))
        return {it: sum(curve[it] for curve in curves) / len(curves) for it in shared}

    vanilla = mean_curve(("vanilla", "vanilla-seed2"))
    iterations = sorted(it for it in vanilla if it > 0)
    if not iterations:
        return ""
    lines = ["| iteration | " + " | ".join(map(str, iterations)) + " |",
             "|---|" + "---|" * len(iterations)]
    for label, names in GAP_ROWS:
        curve = mean_curve(names)
        if curve:
            lines.append(f"| {label} | " + " | ".join(
                f"{vanilla[it] - curve[it]:+.3f}" if it in curve else "-" for it in iterations)
                + " |")
    return "\n".join(lines)
