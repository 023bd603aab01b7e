"""Which parameters are weight-decayed: megatron-core's rule (not biases, not 1-D parameters)
except the Pause baseline's pause vector, which the authors' optimizer decays as a row of the
embedding matrix."""

from tests.distributed import run_ranks
from tests.parallel.ranks import case_flags


def _weight_decay_by_parameter(flags):
    import warnings

    warnings.filterwarnings("ignore")
    from megatron_ponder.training.arguments import parse_args
    from megatron_ponder.training.trainer import training_session

    with training_session(parse_args(flags)) as trainer:
        names = {id(p): n for n, p in trainer.model.module.named_parameters()}
        return {names[id(p)]: group["wd_mult"] * group["weight_decay"]
                for group in trainer.optimizer.param_groups for p in group["params"]}


def test_the_pause_vector_is_decayed_like_the_matrices_and_norms_biases_are_not():
    flags = case_flags("gpt_neox", 1, 1, 1, "--ponder-method", "pause", "--weight-decay", "0.1")
    decay = run_ranks(_weight_decay_by_parameter, 1, flags)[0]
    assert decay["pause_embedding"] == 0.1
    assert decay["embedding.word_embeddings.weight"] == 0.1
    assert decay["decoder.layers.0.self_attention.linear_qkv.weight"] == 0.1
    assert decay["decoder.layers.0.self_attention.linear_qkv.bias"] == 0.0
    assert decay["decoder.final_layernorm.weight"] == 0.0
    assert decay["decoder.layers.0.input_layernorm.bias"] == 0.0
