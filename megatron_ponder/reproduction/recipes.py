"""The arms of the reproduction (``tools/reproduce.py``) and the recipes that size them.

Every arm is one pretrain_ponder.py run of the same recipe (model size, data, batch, learning
rate schedule shape, seed and data order), differing only in the flags that make it that arm:

==========================  ===============================================================
vanilla, vanilla-seed2      K=0 (one pass; embeddings scaled as in PonderLM-2), two seeds
vanilla-2x-depth            K=0 with twice the layers: PonderLM-2 K=1's inference FLOPs
ponderlm2-k1, -seed2        K=1, J drawn per micro-batch (the paper), two seeds
pause-k1                    one learned pause slot after every token (the paper's baseline)
loop-k1                     the tokens through the layer stack twice (the paper's baseline)
vanilla-compute-matched     K=0 trained on as many FLOPs as ponderlm2-k1 (many more tokens)
ponderlm2-k1-grad2          gradients through the last 2 passes only (--ponder-grad-passes 2)
ponderlm2-k1-warmup         the first half of training as K=0 (--ponder-warmup-iters)
vanilla-continued           the vanilla arm's final model, trained further as K=0
ponderlm2-k1-continued      the vanilla arm's final model, trained further as K=1
==========================  ===============================================================

(``ponderlm2-k2`` is defined too, outside the default set.)
"""

import math
from dataclasses import dataclass, field, replace
from typing import Dict, List, Optional, Sequence, Tuple

SEEDS = (1234, 4321)


@dataclass(frozen=True)
class Recipe:
    """The shared training setup of all arms at one scale."""

    name: str
    description: str
    model_flags: Tuple[str, ...]
    """Model size (a preset plus overrides); the 2x-depth arm doubles --num-layers."""
    num_layers: int
    seq_length: int
    micro_batch_size: int
    global_batch_size: int
    train_iters: int
    """Iterations of every arm but the compute-matched and continued ones."""
    lr: float
    jacobi_flags: Tuple[str, ...] = ("--random-jacobi-iterations",)
    continue_iters: Optional[int] = None
    """Iterations of the continued-pretraining arms (default: half of train_iters)."""
    eval_points: int = 10
    """Validation evaluations during training (the curves)."""
    eval_iters: int = 8
    checkpoints_per_arm: int = 6
    extra_flags: Tuple[str, ...] = ()
    """Platform flags (bf16 on GPUs, ...)."""
    needs_data: bool = False
    """True for GPU scales: the user passes --data-path / --tokenizer-model."""

    @property
    def tokens_per_iteration(self) -> int:
        return self.global_batch_size * self.seq_length

    @property
    def continued_iters(self) -> int:
        return self.continue_iters or max(self.train_iters // 2, 1)

    @property
    def eval_interval(self) -> int:
        """Evaluations at the same token counts in every arm (the compute-matched arm just has
        more of them): every train_iters / eval_points iterations of the recipe."""
        return max(self.train_iters // self.eval_points, 1)

    def save_interval(self, train_iters: int) -> int:
        return max(math.ceil(train_iters / self.checkpoints_per_arm), 1)


RECIPES: Dict[str, Recipe] = {
    # Sized for 2 CPU cores in at most 90 minutes with two arms at a time (see docs/results.md
    # for the timing): the launcher's tiny GPT-NeoX model (H=128, 4 layers) on a 2,048-token
    # byte-level BPE of the default corpus, so that the embedding does not dominate the
    # parameters and the model learns context within 240 steps. (300 steps took about 95
    # minutes of two-at-a-time arm time on an idle 2-core machine: over budget.)
    "small": Recipe(
        name="small",
        description="tiny GPT-NeoX (H=128, 4 layers), BPE-2048, 240 x 16 x 128 tokens (every "
                    "arm: about 40 minutes of one core)",
        model_flags=("--model-preset", "tiny"), num_layers=4, seq_length=128,
        micro_batch_size=16, global_batch_size=16, train_iters=240, lr=2e-3, eval_points=8),
    # The same arms 3.75 times longer (about 1.8M tokens, half an epoch): about 140 minutes of
    # one core for every default arm (docs/results.md, "How long it takes").
    "long": Recipe(
        name="long",
        description="as small, 900 iterations (1.84M tokens; every arm: about 140 minutes of one "
                    "core)",
        model_flags=("--model-preset", "tiny"), num_layers=4, seq_length=128,
        micro_batch_size=16, global_batch_size=16, train_iters=900, lr=2e-3),
    # GPU scale: the paper's Pythia-70M ablation model on 2B tokens of the user's corpus
    # (GPT-NeoX tokenizer), bf16. Pass --data-path and, for several GPUs, --nproc-per-node.
    "gpu-70m": Recipe(
        name="gpu-70m",
        description="Pythia-70M, seq 2048, 256 x 2048 tokens/step, 3,815 steps (2B tokens)",
        model_flags=("--model-preset", "pythia-70m"), num_layers=6, seq_length=2048,
        micro_batch_size=8, global_batch_size=256, train_iters=3815, lr=1e-3,
        extra_flags=("--bf16",), needs_data=True, eval_iters=20),
    # The paper's Table 3 setting: Llama-1.4B on 26B tokens (J in {2,3}), bf16.
    "paper": Recipe(
        name="paper",
        description="Llama-1.4B, seq 2048, 512 x 2048 tokens/step, 24,796 steps (26B tokens)",
        model_flags=("--model-preset", "llama-1.4b"), num_layers=24, seq_length=2048,
        micro_batch_size=4, global_batch_size=512, train_iters=24796, lr=4e-4,
        extra_flags=("--bf16", "--recompute-granularity", "full"), needs_data=True,
        eval_iters=20),
}


@dataclass(frozen=True)
class Arm:
    """One training run of the reproduction."""

    name: str
    description: str
    flags: Tuple[str, ...]
    """pretrain_ponder.py flags on top of the recipe's."""
    seed: int = SEEDS[0]
    deeper: bool = False
    """Twice the recipe's layers."""
    init_from: Optional[str] = None
    """Continued pretraining: start from this arm's final checkpoint (weights only)."""
    train_iters: Optional[int] = None
    """Iterations when not the recipe's (continued arms); the compute-matched arm is sized
    from the FLOPs of ``flops_matched_to`` instead."""
    flops_matched_to: Optional[str] = None
    group: str = "baseline"
    """For the plots: baseline, ponderlm2, cheaper or continued."""
    tags: Tuple[str, ...] = field(default=())
    lr: Optional[float] = None
    """Peak learning rate when not the recipe's (a learning-rate sweep, ``--lr``)."""
    base: Optional[str] = None
    """The arm this one is a learning-rate variant of (its name without the rate suffix)."""

    @property
    def family(self) -> str:
        """The arm's name without a learning-rate suffix: what the claims compare."""
        return self.base or self.name

    def learning_rate(self, recipe: "Recipe") -> float:
        return self.lr if self.lr is not None else recipe.lr


def arms_for(recipe: Recipe) -> List[Arm]:
    """Every arm of ``recipe``, in a valid run order (sources before their continuations)."""
    k0 = ("--num-latent-thoughts", "0")
    k1 = ("--num-latent-thoughts", "1") + recipe.jacobi_flags
    half = str(max(recipe.train_iters // 2, 1))
    return [
        Arm("vanilla", "K=0, same size", k0),
        Arm("vanilla-seed2", "K=0, second seed", k0, seed=SEEDS[1]),
        Arm("vanilla-2x-depth", "K=0, 2x layers (inference FLOPs of K=1)", k0, deeper=True),
        Arm("ponderlm2-k1", "PonderLM-2, K=1", k1, group="ponderlm2"),
        Arm("ponderlm2-k1-seed2", "PonderLM-2, K=1, second seed", k1, seed=SEEDS[1],
            group="ponderlm2"),
        Arm("pause-k1", "Pause, 1 pause slot per token", ("--num-latent-thoughts", "1",
                                                          "--ponder-method", "pause")),
        Arm("loop-k1", "Loop, stack run twice", ("--num-latent-thoughts", "1",
                                                 "--ponder-method", "loop")),
        Arm("vanilla-compute-matched", "K=0 on the training FLOPs of ponderlm2-k1", k0,
            flops_matched_to="ponderlm2-k1"),
        Arm("ponderlm2-k1-grad2", "K=1, gradients through the last 2 passes",
            k1 + ("--ponder-grad-passes", "2"), group="cheaper"),
        Arm("ponderlm2-k1-warmup", f"K=1 after {half} iterations as K=0",
            k1 + ("--ponder-warmup-iters", half), group="cheaper"),
        Arm("vanilla-continued", "vanilla's final model, further as K=0", k0,
            init_from="vanilla", train_iters=recipe.continued_iters, group="continued"),
        Arm("ponderlm2-k1-continued", "vanilla's final model, further as K=1", k1,
            init_from="vanilla", train_iters=recipe.continued_iters, group="continued"),
        Arm("ponderlm2-k2", "PonderLM-2, K=2", ("--num-latent-thoughts", "2")
            + recipe.jacobi_flags, group="ponderlm2", tags=("optional",)),
        Arm("vanilla-2x-depth-seed2", "K=0, 2x layers, second seed", k0, deeper=True,
            seed=SEEDS[1], tags=("optional",)),
        Arm("ponderlm2-k1-grad2-warmup", f"K=1, last 2 passes' gradients, after {half} "
            f"iterations as K=0", k1 + ("--ponder-grad-passes", "2", "--ponder-warmup-iters",
                                        half), group="cheaper", tags=("optional",)),
    ]


# With --lr best, the arm whose swept rates pick each arm's rate (arms not listed: their own).
TUNED_BY = {
    "vanilla-seed2": "vanilla", "vanilla-compute-matched": "vanilla",
    "vanilla-continued": "vanilla", "vanilla-2x-depth-seed2": "vanilla-2x-depth",
    **{name: "ponderlm2-k1" for name in (
        "ponderlm2-k1-seed2", "ponderlm2-k1-grad2", "ponderlm2-k1-warmup",
        "ponderlm2-k1-grad2-warmup", "ponderlm2-k1-continued", "pause-k1", "loop-k1",
        "ponderlm2-k2")},
}


def best_learning_rate(output_dir: str, arm: Arm, read_result) -> float:
    """The peak rate at which the arm that tunes ``arm`` (``TUNED_BY``) reached the lowest
    final validation loss among the finished runs of it in ``output_dir`` (its run at the
    recipe's rate and every ``-lr<rate>`` run). ``read_result(directory)`` returns a run's
    result.json as a dict, or None when the run has not finished."""
    import os

    tuner = TUNED_BY.get(arm.name, arm.name)
    prefix = tuner + "-lr"
    runs = [name for name in sorted(os.listdir(output_dir)) if name == tuner
            or (name.startswith(prefix) and _is_rate(name[len(prefix):]))] \
        if os.path.isdir(output_dir) else []
    finished = [result for result in (read_result(os.path.join(output_dir, name))
                                      for name in runs) if result]
    if not finished:
        raise ValueError(f"--lr best: no finished run of {tuner} in {output_dir} to choose "
                         f"{arm.name}'s learning rate from (run the sweep first: --arms "
                         f"{tuner} --lr RATE ...)")
    return min(finished, key=lambda result: result["valid_loss"])["lr"]


def _is_rate(text: str) -> bool:
    try:
        return float(text) > 0
    except ValueError:
        return False


def default_arm_names(recipe: Recipe) -> List[str]:
    return [arm.name for arm in arms_for(recipe) if "optional" not in arm.tags]


def lr_suffix(lr: float) -> str:
    return f"-lr{lr:g}"


def at_learning_rate(recipe: Recipe, arm: Arm, lr: float) -> Arm:
    """``arm`` trained at peak rate ``lr``: the arm itself at the recipe's rate, else a copy
    named ``<arm>-lr<rate>`` (its own run directory) whose source arm, if any, is at the same
    rate too."""
    if lr == recipe.lr:
        return arm
    return replace(arm, name=arm.name + lr_suffix(lr), lr=lr, base=arm.name,
                   init_from=arm.init_from and arm.init_from + lr_suffix(lr))


def select_arms(recipe: Recipe, names: Optional[Sequence[str]],
                learning_rates: Optional[Sequence[float]] = None) -> List[Arm]:
    """The named arms (default: all but the optional ones) plus the arms they depend on,
    in run order, each at every rate of ``learning_rates`` (default: the recipe's).
    Unknown names and non-positive rates raise with what is allowed."""
    rates = list(learning_rates or [recipe.lr])
    bad = [rate for rate in rates if not rate > 0 or not math.isfinite(rate)]
    if bad:
        raise ValueError(f"--lr must be positive, got {bad[0]:g}")
    rates = sorted(set(rates))
    return [at_learning_rate(recipe, arm, rate) for rate in rates
            for arm in _select_at_recipe_rate(recipe, names)]


def _select_at_recipe_rate(recipe: Recipe, names: Optional[Sequence[str]]) -> List[Arm]:
    arms = arms_for(recipe)
    by_name = {arm.name: arm for arm in arms}
    wanted = list(names) if names else default_arm_names(recipe)
    unknown = [name for name in wanted if name not in by_name]
    if unknown:
        raise ValueError(f"unknown arm(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    needed = set(wanted)
    for name in wanted:  # the compute-matched arm needs only the other arm's definition
        if by_name[name].init_from:
            needed.add(by_name[name].init_from)
    return [arm for arm in arms if arm.name in needed]


def find_arm(recipe: Recipe, name: str) -> Arm:
    for arm in arms_for(recipe):
        if arm.name == name:
            return arm
    raise ValueError(f"unknown arm {name!r}")
