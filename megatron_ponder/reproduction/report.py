"""The reproduction's table (Markdown and JSON) and its two plots (validation loss against
training tokens and against training FLOPs)."""

import math
import os
from typing import Dict, List, Optional, Sequence, Tuple

from megatron_ponder.reproduction.runner import write_json

COLUMNS = ("arm", "lr", "parameters", "training tokens", "training FLOPs",
           "inference FLOPs/token", "wall time", "valid loss", "valid ppl", "held-out loss",
           "held-out ppl")


PLOTS = ("valid_loss_vs_tokens.png", "valid_loss_vs_flops.png", "gap_vs_tokens.png")


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
)
SECOND_SEED_SUFFIX = "-seed2"
# The cheaper ways to train K=1 (label, arm), each set against full K=1 by cheaper_table.
CHEAPER = (("last 2 passes' gradients", "ponderlm2-k1-grad2"),
           ("first half as K=0", "ponderlm2-k1-warmup"),
           ("both", "ponderlm2-k1-grad2-warmup"))


def _by_arm(results: Sequence[dict]) -> dict:
    return {result["arm"]: result for result in results}


def seeds_of(by_arm: dict, arm: str) -> List[dict]:
    """The finished runs of ``arm`` over its seeds: the arm and its second seed."""
    return [by_arm[name] for name in (arm, arm + SECOND_SEED_SUFFIX) if name in by_arm]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def _spread(runs: Sequence[dict]) -> Optional[float]:
    return abs(runs[0]["valid_loss"] - runs[1]["valid_loss"]) if len(runs) > 1 else None


def seed_spread(results: Sequence[dict]) -> Optional[float]:
    """The largest final validation loss difference between two seeds of the same arm."""
    by_arm = _by_arm(results)
    spreads = [_spread(seeds_of(by_arm, arm)) for arm in by_arm
               if not arm.endswith(SECOND_SEED_SUFFIX)]
    spreads = [spread for spread in spreads if spread is not None]
    return max(spreads) if spreads else None


def claims_table(results: Sequence[dict]) -> str:
    """Markdown: per claim, the loss gain (compared arm minus arm, positive = the arm is
    better; each side the mean over its seeds), the held-out gain, the training-FLOPs ratio, the
    seed spread it is judged against (the larger of the two arms' own, else the largest measured)
    and whether the gain exceeds twice that spread."""
    by_arm = _by_arm(results)
    largest = seed_spread(results)
    lines = ["| claim | arm vs compared | seeds | valid loss gain | held-out gain | training "
             "FLOPs ratio | seed spread | beyond 2x seed spread |",
             "|---|---|---|---|---|---|---|---|"]
    for claim, arm, other in CLAIMS:
        mine, theirs = seeds_of(by_arm, arm), seeds_of(by_arm, other)
        if not mine or not theirs:
            continue
        gain = (_mean([run["valid_loss"] for run in theirs])
                - _mean([run["valid_loss"] for run in mine]))
        held_out = "-"
        if all(run.get("heldout_loss") is not None for run in mine + theirs):
            held_out_gain = (_mean([run["heldout_loss"] for run in theirs])
                             - _mean([run["heldout_loss"] for run in mine]))
            held_out = f"{held_out_gain:+.4f}"
        own = [spread for spread in (_spread(mine), _spread(theirs)) if spread is not None]
        spread = max(own) if own else largest
        verdict = "-" if spread is None else ("yes" if abs(gain) > 2 * spread else "no")
        flops = (_mean([run["training_flops"] for run in mine])
                 / _mean([run["training_flops"] for run in theirs]))
        lines.append(f"| {claim} | {arm} vs {other} | {len(mine)} vs {len(theirs)} | "
                     f"{gain:+.4f} | {held_out} | {flops:.2f}x | "
                     f"{'-' if spread is None else f'{spread:.4f}'} | {verdict} |")
    return "\n".join(lines)


def cheaper_table(results: Sequence[dict]) -> str:
    """Markdown: full K=1 and each cheaper way to train it, with its final losses, its gain over
    vanilla, the share of full K=1's gain that it keeps and its training FLOPs against full K=1.
    All from the first seed (the cheaper arms' one), so every run shares initialization and data
    order. Empty without vanilla and full K=1."""
    by_arm = _by_arm(results)
    if "vanilla" not in by_arm or "ponderlm2-k1" not in by_arm:
        return ""
    vanilla, full = by_arm["vanilla"], by_arm["ponderlm2-k1"]
    full_gain = vanilla["valid_loss"] - full["valid_loss"]
    lines = ["| training | arm | valid loss | gain over vanilla | share of K=1's gain kept | "
             "held-out gain over vanilla | training FLOPs vs full K=1 |",
             "|---|---|---|---|---|---|---|"]
    for label, arm in (("full K=1", "ponderlm2-k1"),) + CHEAPER:
        if arm not in by_arm:
            continue
        run = by_arm[arm]
        gain = vanilla["valid_loss"] - run["valid_loss"]
        share = f"{gain / full_gain:.0%}" if full_gain > 0 else "- (no gain)"
        held_out = ("-" if run.get("heldout_loss") is None or vanilla.get("heldout_loss") is None
                    else f"{vanilla['heldout_loss'] - run['heldout_loss']:+.4f}")
        lines.append(f"| {label} | {arm} | {run['valid_loss']:.4f} | {gain:+.4f} | {share} | "
                     f"{held_out} | {run['training_flops'] / full['training_flops']:.2f}x |")
    return "\n".join(lines)


GAP_ROWS = (("PonderLM-2 K=1", "ponderlm2-k1"),
            ("vanilla 2x depth", "vanilla-2x-depth"),
            ("Loop K=1", "loop-k1"),
            ("K=1, last 2 passes' gradients", "ponderlm2-k1-grad2"),
            ("K=1, first half as K=0", "ponderlm2-k1-warmup"),
            ("K=1, both cheaper ways", "ponderlm2-k1-grad2-warmup"))


def _curve(run: dict, key: str) -> Dict[float, float]:
    return {point[key]: point["loss"] for point in run.get("curve") or []}


def gap_points(results: Sequence[dict], arm: str, key: str = "iteration"
               ) -> List[Tuple[float, float, float, float]]:
    """(x, gap, lowest, highest) at every evaluation after the first that vanilla's and the
    arm's seeds share: gap is vanilla's mean in-training validation loss minus the arm's (positive
    = the arm is better), lowest/highest the extremes of that difference over every pairing of a
    vanilla seed with an arm seed (the seed spread). Empty without vanilla or the arm."""
    by_arm = _by_arm(results)
    vanilla = [_curve(run, key) for run in seeds_of(by_arm, "vanilla")]
    mine = [_curve(run, key) for run in seeds_of(by_arm, arm)]
    if not vanilla or not mine:
        return []
    shared = sorted(set.intersection(*(set(curve) for curve in vanilla + mine)) - {0, 0.0})
    points = []
    for x in shared:
        pairs = [v[x] - a[x] for v in vanilla for a in mine]
        points.append((x, _mean([v[x] for v in vanilla]) - _mean([a[x] for a in mine]),
                       min(pairs), max(pairs)))
    return points


def gap_table(results: Sequence[dict]) -> str:
    """Markdown: the in-training validation loss of vanilla minus that of each arm, at every
    evaluation of the recipe's iterations (positive = better than vanilla); vanilla and arms
    with two seeds are the mean over their seeds. Empty without vanilla."""
    rows = [(label, {x: gap for x, gap, _, _ in gap_points(results, arm)})
            for label, arm in GAP_ROWS]
    vanilla = {point["iteration"] for run in seeds_of(_by_arm(results), "vanilla")
               for point in run.get("curve") or []}
    iterations = sorted(it for it in vanilla if it > 0)
    if not iterations:
        return ""
    lines = ["| iteration | " + " | ".join(map(str, iterations)) + " |",
             "|---|" + "---|" * len(iterations)]
    for label, gaps in rows:
        if gaps:
            lines.append(f"| {label} | " + " | ".join(
                f"{gaps[it]:+.3f}" if it in gaps else "-" for it in iterations) + " |")
    return "\n".join(lines)


# (label, arm, share of training before which the arm is not drawn): the K=0 warm-up arms train
# without thoughts for the first half (recipes.py) while their in-training validation already
# scores them with K=1, which measures nothing they have learned.
GAP_PLOT_ARMS = (("vanilla 2x depth", "vanilla-2x-depth", 0.0),
                 ("PonderLM-2 K=1", "ponderlm2-k1", 0.0),
                 ("K=1, last 2 passes' gradients", "ponderlm2-k1-grad2", 0.0),
                 ("K=1, both cheaper ways (after its K=0 half)", "ponderlm2-k1-grad2-warmup",
                  0.5))


def plot_gap(results_by_scale: Sequence[Tuple[str, Sequence[dict]]], path: str) -> Optional[str]:
    """One plot of the gap to vanilla against training tokens for 2x depth, K=1 and its cheaper
    variants at every scale given (a line style per scale): the mean over seeds, with the seed
    spread shaded. Returns the path, or None when no scale has vanilla and one of the arms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    drawn = False
    for scale_index, (scale, results) in enumerate(results_by_scale):
        style = ("-", "--", ":", "-.")[scale_index % 4]
        for arm_index, (label, arm, hidden_share) in enumerate(GAP_PLOT_ARMS):
            points = gap_points(results, arm, key="tokens")
            if not points:
                continue
            end = seeds_of(_by_arm(results), arm)[0]["training_tokens"]
            points = [point for point in points if point[0] > hidden_share * end]
            xs, gaps, lows, highs = zip(*points)
            color = f"C{arm_index}"
            ax.plot(xs, gaps, style, marker="o", markersize=2.5, color=color, linewidth=1.3,
                    label=f"{label} ({scale})")
            ax.fill_between(xs, lows, highs, color=color, alpha=0.12, linewidth=0)
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel("vanilla's validation loss minus the arm's (nats)")
    ax.set_title("Gain over vanilla during training (mean of seeds; shaded: seed spread)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(output_dir: str, every_run: Sequence[dict],
                 other_scales: Sequence[Tuple[str, Sequence[dict]]] = ()) -> str:
    """table.md, results.json and the plots in ``output_dir`` from ``every_run`` (each arm at its
    best learning rate, with the sweep's own table when some arm ran at several); the gap plot
    also draws ``other_scales`` ((name, runs) of other recipes). Returns the plain-text table."""
    write_json(os.path.join(output_dir, "results.json"), list(every_run))
    results = at_best_rates(every_run)
    sections = [markdown_table(results)]
    sweep = learning_rate_table(every_run)
    if sweep:
        sections.append("Final validation loss at each peak learning rate (the tables use each "
                        "arm's best, in bold):\n\n" + sweep)
    sections.append(claims_table(results))
    cheaper = cheaper_table(results)
    if cheaper:
        sections.append("Cheaper K=1 training (first seed):\n\n" + cheaper)
    gaps = gap_table(results)
    if gaps:
        sections.append("Validation loss of vanilla minus each arm's during training "
                        "(positive = better than vanilla; seeds averaged):\n\n" + gaps)
    with open(os.path.join(output_dir, "table.md"), "w", encoding="utf-8") as handle:
        handle.write("\n\n".join(sections) + "\n")
    plot_curves(results, output_dir)
    scale = os.path.basename(os.path.normpath(output_dir))
    plot_gap([(scale, results)] + [(name, at_best_rates(runs)) for name, runs in other_scales],
             os.path.join(output_dir, "gap_vs_tokens.png"))
    return plain_table(results) + "\n\n" + claims_table(results)
