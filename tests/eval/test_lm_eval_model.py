"""``PonderHFLM`` (lm-eval's own ``HFLM`` on the transformers-native model) on a tiny PonderLM-2:
built from a training checkpoint or from its exported folder alike, its log-likelihoods and
greedy generations equal those of our megatron-core training model's forward (computed here
directly), in any batch; Jacobi passes are counted; misuse fails with a clear error."""

import math
import textwrap
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance

from megatron_ponder.eval.lm_eval_model import PonderHFLM
from megatron_ponder.hf import from_pretrained, load_training_model
from megatron_ponder.hf.conversion import hf_to_checkpoint
from megatron_ponder.hf.loading import load_tokenizer
from megatron_ponder.tokenizer import TokenizerError
from tests.eval.hf_backend import CHOICE_DOCS, export_tiny, write_tasks

pytestmark = [pytest.mark.usefixtures("single_process"), pytest.mark.filterwarnings("ignore")]

PAIRS = [("The cat sat on", " the mat"), ("Q: 2+2?\nA:", " 4"), ("abc", "d"),
         ("A much longer context about nothing in particular", " at all."), ("x", " y z")]
J = 2  # export_tiny's Jacobi passes
# Greedy generation picks the end-of-text token where it would have picked "G".
EOD_LIKE = 40


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval_model")
    _, folder = export_tiny(root / "model", eod_like=EOD_LIKE)
    checkpoint = str(root / "checkpoint")
    hf_to_checkpoint(folder, checkpoint)
    return SimpleNamespace(folder=folder, checkpoint=checkpoint,
                           reference=load_training_model(folder),
                           tokenizer=load_tokenizer(folder))


def _requests(kind, arguments):
    return [Instance(kind, {}, args, i) for i, args in enumerate(arguments)]


def _loglikelihoods(lm, pairs=PAIRS):
    return lm.loglikelihood(_requests("loglikelihood", pairs), disable_tqdm=True)


def _training_log_probs(reference, ids):
    """log-softmax of the training forward [L, V] over one unpadded row of token ids."""
    with torch.no_grad():
        return F.log_softmax(reference(torch.tensor([ids]))[0].double(), dim=-1)


def _reference_loglikelihood(tiny, context, continuation):
    """(sum of the continuation's log-probabilities, whether each is the argmax)."""
    context_ids = tiny.tokenizer.tokenize(context)
    continuation_ids = tiny.tokenizer.tokenize(continuation)
    log_probs = _training_log_probs(tiny.reference, context_ids + continuation_ids)
    rows = log_probs[len(context_ids) - 1:-1]
    target = torch.tensor(continuation_ids)
    return (rows.gather(-1, target[:, None]).sum().item(),
            bool((rows.argmax(-1) == target).all()))


def test_a_training_checkpoint_scores_like_its_exported_folder(tiny):
    from_checkpoint = PonderHFLM(tiny.checkpoint, tokenizer=tiny.folder, device="cpu")
    from_folder = PonderHFLM(tiny.folder, device="cpu")
    for lm in (from_checkpoint, from_folder):
        assert type(lm.model).__name__ == "PonderLM2ForCausalLM"
    got, expected = _loglikelihoods(from_checkpoint), _loglikelihoods(from_folder)
    assert [greedy for _, greedy in got] == [greedy for _, greedy in expected]
    assert [score for score, _ in got] == pytest.approx([score for score, _ in expected],
                                                        abs=1e-6)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_loglikelihood_equals_the_training_forward_in_any_batch(tiny, batch_size):
    # Batches of 3 mix lengths: right padding must not change any row.
    lm = PonderHFLM(from_pretrained(tiny.folder), tokenizer=tiny.tokenizer, batch_size=batch_size)
    expected = [_reference_loglikelihood(tiny, c, x) for c, x in PAIRS]
    got = _loglikelihoods(lm)
    for (score, greedy), (want, want_greedy) in zip(got, expected):
        assert score == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy
    assert lm.jacobi_counts["forwards"] == math.ceil(len(PAIRS) / batch_size)


def test_the_greedy_flag_is_true_for_the_models_own_continuation(tiny):
    context = "x"
    ids = tiny.tokenizer.tokenize(context)
    for _ in range(3):  # the training model's greedy tokens ("auT")
        ids.append(int(_training_log_probs(tiny.reference, ids)[-1].argmax()))
    continuation = tiny.tokenizer.detokenize(ids[1:])
    [(_, greedy)] = _loglikelihoods(PonderHFLM(tiny.folder, device="cpu"),
                                    [(context, continuation)])
    assert greedy


def _windowed_loglikelihood(tiny, text, max_length):
    """The text's log-likelihood scored window by window with the training forward: the first
    ``max_length`` tokens after the end-of-text token, then each next ``max_length`` tokens
    with as much context as fits in a window of ``max_length`` inputs."""
    tokens = tiny.tokenizer.tokenize(text)
    stream = [tiny.tokenizer.eod] + tokens  # stream[i] predicts tokens[i]
    total, start = 0.0, 0
    while start < len(tokens):
        end = min(start + max_length, len(tokens))
        first_input = max(0, end - max_length)
        log_probs = _training_log_probs(tiny.reference, stream[first_input:end])
        for position in range(start, end):
            total += log_probs[position - first_input, tokens[position]].item()
        start = end
    return total


def test_loglikelihood_rolling_scores_long_texts_window_by_window(tiny):
    text = "Rolling windows cover every token exactly once."
    length = len(tiny.tokenizer.tokenize(text))
    requests = _requests("loglikelihood_rolling", [(text,)])
    whole = PonderHFLM(tiny.folder, device="cpu", max_length=length)
    [got_whole] = whole.loglikelihood_rolling(requests, disable_tqdm=True)
    expected_whole = _windowed_loglikelihood(tiny, text, length)
    assert got_whole == pytest.approx(expected_whole, abs=1e-4)

    windowed = PonderHFLM(tiny.folder, device="cpu", max_length=8, batch_size=4)
    [got] = windowed.loglikelihood_rolling(requests, disable_tqdm=True)
    assert got == pytest.approx(_windowed_loglikelihood(tiny, text, 8), abs=1e-4)
    assert got != pytest.approx(expected_whole, abs=1e-3)  # less context, another score
    # 47 tokens in windows of 8: 6 windows, in batches of 4.
    assert windowed.jacobi_counts["forwards"] == math.ceil(math.ceil(length / 8) / 4) == 2


def _reference_generation(tiny, reference, context, max_tokens, stops):
    """Greedy decoding by repeated full forwards of the training model ``reference``, ended at
    the end-of-text token and cut at the first stop string -> (text, how it ended)."""
    ids = tiny.tokenizer.tokenize(context)
    new = []
    for _ in range(max_tokens):
        token = int(_training_log_probs(reference, ids + new)[-1].argmax())
        if token == tiny.tokenizer.eod:
            break
        new.append(token)
    text, ended = tiny.tokenizer.detokenize(new), "eod" if len(new) < max_tokens else "length"
    cuts = [text.index(stop) for stop in stops if stop in text]
    return (text[:min(cuts)], "stop") if cuts else (text, ended)


def test_generate_until_is_greedy_and_stops_at_stop_strings_and_eod(tiny):
    contexts = ["Once upon", "abc", "x", "Hello"]
    settings = {"until": ["T", "\n"], "max_gen_toks": 6, "do_sample": False}
    # Cached decoding gives each new token its exact thoughts (slot after slot); full forwards
    # reach them once the Jacobi passes have converged, which K * length + 1 passes guarantee.
    exact = 1 * (max(len(c) for c in contexts) + settings["max_gen_toks"]) + 1
    reference = load_training_model(tiny.folder, jacobi_iterations=exact)
    expected = [_reference_generation(tiny, reference, c, 6, settings["until"])
                for c in contexts]
    # The model ends some rows with its end-of-text token and some at a stop string.
    assert {ended for _, ended in expected} >= {"eod", "stop"}, expected
    # A model converted from a training checkpoint stops at the tokenizer's end-of-text too.
    for source in (tiny.folder, tiny.checkpoint):
        lm = PonderHFLM(source, tokenizer=tiny.folder, device="cpu", batch_size=2,
                        jacobi_iterations=exact)  # left-padded batches
        got = lm.generate_until(_requests("generate_until",
                                          [(c, settings) for c in contexts]),
                                disable_tqdm=True)
        assert got == [text for text, _ in expected], source
        # Two batches: each prefill ran the Jacobi passes once; decoding steps run none.
        assert lm.jacobi_counts == {"forwards": 2, "jacobi_iterations": 2 * exact}


def test_lm_eval_scores_tiny_local_tasks_offline(tiny, tmp_path):
    """simple_evaluate end to end: multiple choice scored like the training forward (acc the
    share of docs whose gold choice scores highest), generation greedy and cut at "\\n"."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    write_tasks(tmp_path)
    (tmp_path / "tiny_generate.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_generate
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {tmp_path / "mc.jsonl"}
        test_split: test
        output_type: generate_until
        doc_to_text: "Q: {{{{question}}}}\\nA:"
        doc_to_target: "{{{{choices[answer]}}}}"
        generation_kwargs:
          until: ["\\n"]
          max_gen_toks: 4
        metric_list:
          - metric: exact_match
        """))
    exact = 1 * (max(len(f"Q: {doc['question']}\nA:") for doc in CHOICE_DOCS) + 4) + 1
    lm = PonderHFLM(tiny.folder, device="cpu", batch_size=4, jacobi_iterations=exact)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=["tiny_mc", "tiny_generate"], log_samples=True, bootstrap_iters=0,
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))
    reference = load_training_model(tiny.folder, jacobi_iterations=exact)
    scoring = SimpleNamespace(tokenizer=tiny.tokenizer, reference=reference)

    samples = sorted(results["samples"]["tiny_mc"], key=lambda s: s["doc_id"])
    correct = 0
    for doc, sample in zip(CHOICE_DOCS, samples):
        scores = [_reference_loglikelihood(scoring, f"Q: {doc['question']}\nA:", " " + choice)[0]
                  for choice in doc["choices"]]
        assert [float(r[0]) for r in sample["filtered_resps"]] == pytest.approx(scores,
                                                                                abs=1e-4)
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    assert results["results"]["tiny_mc"]["acc,none"] == pytest.approx(correct / len(CHOICE_DOCS))

    samples = sorted(results["samples"]["tiny_generate"], key=lambda s: s["doc_id"])
    matches = 0
    for doc, sample in zip(CHOICE_DOCS, samples):
        text, _ = _reference_generation(tiny, reference, f"Q: {doc['question']}\nA:", 4, ["\n"])
        assert sample["filtered_resps"][0] == text
        matches += int(text == doc["choices"][doc["answer"]])
    assert results["results"]["tiny_generate"]["exact_match,none"] == \
        pytest.approx(matches / len(CHOICE_DOCS))


def test_mean_jacobi_iterations_counts_the_models_passes(tiny):
    config = PonderHFLM(tiny.folder, device="cpu", batch_size=2)
    assert config.mean_jacobi_iterations is None  # nothing run yet
    _loglikelihoods(config)
    assert config.mean_jacobi_iterations == J
    # lm-eval's --model_args arrive as strings.
    fixed = PonderHFLM(tiny.checkpoint, tokenizer=tiny.folder, device="cpu",
                       jacobi_iterations="1")
    _loglikelihoods(fixed)
    assert fixed.mean_jacobi_iterations == 1
    adaptive = PonderHFLM(tiny.checkpoint, tokenizer=tiny.folder, device="cpu", batch_size=1,
                          jacobi_iterations="adaptive", jacobi_tolerance="1e-3",
                          max_jacobi_iterations="5")
    _loglikelihoods(adaptive)
    assert 1 <= adaptive.mean_jacobi_iterations <= 5
    assert adaptive.jacobi_counts["forwards"] == len(PAIRS)
    loose = PonderHFLM(tiny.checkpoint, tokenizer=tiny.folder, device="cpu",
                       jacobi_iterations="adaptive", jacobi_tolerance="1e9",
                       max_jacobi_iterations="5")
    _loglikelihoods(loose)
    assert loose.mean_jacobi_iterations == 1  # any change is within tolerance: one pass
    # Two evaluators of one loaded model count their own forwards only.
    model = from_pretrained(tiny.folder)
    first = PonderHFLM(model, tokenizer=tiny.folder, batch_size=len(PAIRS))
    second = PonderHFLM(model, tokenizer=tiny.folder, batch_size=len(PAIRS))
    _loglikelihoods(first)
    assert first.jacobi_counts["forwards"] >= 1 and second.jacobi_counts["forwards"] == 0


def test_clear_errors(tiny):
    from megatron_ponder.tokenizer.tiktoken_bpe import TiktokenTokenizer

    model = from_pretrained(tiny.folder)
    with pytest.raises(ValueError, match="jacobi_iterations.*model's settings"):
        PonderHFLM(model, tokenizer=tiny.tokenizer, jacobi_iterations=3)
    with pytest.raises(ValueError, match="needs its tokenizer"):
        PonderHFLM(model)
    with pytest.raises(TokenizerError, match="TiktokenTokenizer .*no transformers "
                                             "equivalent; give a tokenizer.json"):
        PonderHFLM(model, tokenizer=TiktokenTokenizer())
