"""The lm-eval model class on a tiny PonderLM-2 model: its answers equal direct scoring /
generation, batching does not change them, and lm-eval scores a tiny local task offline."""

import json
import textwrap

import pytest
import torch
import torch.nn.functional as F
from lm_eval.api.instance import Instance

from megatron_ponder.eval.lm_eval_adapter import PonderEvalLM, cut_at_stops
from tests.eval.char_tokenizer import char_tokenizer
from tests.inference.helpers import tiny_ponder

pytestmark = pytest.mark.usefixtures("single_process")

PAIRS = [("The cat sat on", " the mat"), ("Q: 2+2?\nA:", " 4"), ("abc", "d"),
         ("A much longer context about nothing in particular", " at all."), ("x", " y z")]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("neox")
    model = tiny_ponder(folder, "gpt_neox", 1)[1]
    return model, char_tokenizer(folder)


def _requests(kind, arguments):
    return [Instance(kind, {}, args, i) for i, args in enumerate(arguments)]


def _direct_loglikelihood(model, tokenizer, context, continuation):
    context_ids, continuation_ids = tokenizer.tokenize(context), tokenizer.tokenize(continuation)
    ids = torch.tensor([context_ids + continuation_ids])
    with torch.no_grad():
        log_probs = F.log_softmax(model(ids).logits[0], dim=-1)
    rows = log_probs[len(context_ids) - 1:-1]
    target = torch.tensor(continuation_ids)
    return (rows.gather(-1, target[:, None]).sum().item(),
            bool((rows.argmax(-1) == target).all()))


def test_loglikelihood_equals_direct_scoring_in_any_batch(setup):
    model, tokenizer = setup
    expected = [_direct_loglikelihood(model, tokenizer, c, x) for c, x in PAIRS]
    for batch_size in (1, 3, 8):
        lm = PonderEvalLM(model=model, tokenizer=tokenizer, batch_size=batch_size)
        got = lm.loglikelihood(_requests("loglikelihood", PAIRS), disable_tqdm=True)
        for (logprob, greedy), (want, want_greedy) in zip(got, expected):
            assert logprob == pytest.approx(want, abs=1e-4)
            assert greedy == want_greedy
    assert lm.pass_counts["forwards"] == 1
    assert lm.mean_jacobi_iterations == model.ponder_config.jacobi_iterations


def test_greedy_flag_is_true_for_the_models_own_continuation(setup):
    model, tokenizer = setup
    context = "hello"
    ids = torch.tensor([tokenizer.tokenize(context)])
    continuation = tokenizer.detokenize(model.generate(ids, max_new_tokens=3)[0, 5:].tolist())
    lm = PonderEvalLM(model=model, tokenizer=tokenizer)
    [(_, greedy)] = lm.loglikelihood(_requests("loglikelihood", [(context, continuation)]),
                                     disable_tqdm=True)
    assert greedy


def test_loglikelihood_rolling(setup):
    model, tokenizer = setup
    text = "Rolling windows cover every token exactly once."
    ids = [tokenizer.eod] + tokenizer.tokenize(text)
    with torch.no_grad():
        log_probs = F.log_softmax(model(torch.tensor([ids])).logits[0, :-1], dim=-1)
    whole = log_probs.gather(-1, torch.tensor(ids[1:])[:, None]).sum().item()
    one_window = PonderEvalLM(model=model, tokenizer=tokenizer, max_length=len(ids))
    [got] = one_window.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]),
                                             disable_tqdm=True)
    assert got == pytest.approx(whole, abs=1e-4)
    short = PonderEvalLM(model=model, tokenizer=tokenizer, max_length=8, batch_size=4)
    [windowed] = short.loglikelihood_rolling(_requests("loglikelihood_rolling", [(text,)]),
                                             disable_tqdm=True)
    assert short.pass_counts["forwards"] == 2  # 7 windows of <= 8 tokens, batches of 4
    assert windowed != pytest.approx(whole, abs=1e-3)  # less context, different score


def test_generate_until_equals_generate_then_cut(setup):
    model, tokenizer = setup
    contexts = ["Once upon", "The weather today is", "1, 2, 3,"]
    settings = {"until": ["e", "\n"], "max_gen_toks": 7}
    lm = PonderEvalLM(model=model, tokenizer=tokenizer, batch_size=2)
    got = lm.generate_until(_requests("generate_until", [(c, settings) for c in contexts]),
                            disable_tqdm=True)
    for context, text in zip(contexts, got):
        ids = torch.tensor([tokenizer.tokenize(context)])
        new = model.generate(ids, max_new_tokens=7, eos_token_id=tokenizer.eod)[0, ids.shape[1]:]
        new = new.tolist()
        if tokenizer.eod in new:
            new = new[:new.index(tokenizer.eod)]
        assert text == cut_at_stops(tokenizer.detokenize(new), ["e", "\n"])
    assert cut_at_stops("abcXdefY", ["Y", "X"]) == "abc"


def _write_tiny_tasks(folder):
    docs = [{"question": "2 + 2", "choices": ["4", "5", "22"], "answer": 0},
            {"question": "capital of France", "choices": ["Rome", "Paris"], "answer": 1},
            {"question": "color of the sky", "choices": ["blue", "green", "red"], "answer": 0}]
    data = folder / "tiny.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / "tiny_choice.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_choice
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        output_type: multiple_choice
        doc_to_text: "Q: {{{{question}}}}\\nA:"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: answer
        metric_list:
          - metric: acc
        """))
    (folder / "tiny_generate.yaml").write_text(textwrap.dedent(f"""\
        task: tiny_generate
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data}
        test_split: test
        output_type: generate_until
        doc_to_text: "Q: {{{{question}}}}\\nA:"
        doc_to_target: "{{{{choices[answer]}}}}"
        generation_kwargs:
          until: ["\\n"]
          max_gen_toks: 5
        metric_list:
          - metric: exact_match
        """))
    return docs


def test_lm_eval_scores_a_tiny_local_task_offline(setup, tmp_path):
    import lm_eval
    from lm_eval.tasks import TaskManager

    model, tokenizer = setup
    docs = _write_tiny_tasks(tmp_path)
    lm = PonderEvalLM(model=model, tokenizer=tokenizer, batch_size=4)
    results = lm_eval.simple_evaluate(
        model=lm, tasks=["tiny_choice", "tiny_generate"], log_samples=True,
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False))

    # Multiple choice: every choice's score is the direct log-likelihood, and acc is the share
    # of docs whose gold choice scores highest.
    samples = sorted(results["samples"]["tiny_choice"], key=lambda s: s["doc_id"])
    correct = 0
    for doc, sample in zip(docs, samples):
        scores = [_direct_loglikelihood(model, tokenizer, f"Q: {doc['question']}\nA:",
                                        " " + choice)[0] for choice in doc["choices"]]
        logged = [float(response[0]) for response in sample["filtered_resps"]]
        assert logged == pytest.approx(scores, abs=1e-4)
        correct += int(max(range(len(scores)), key=scores.__getitem__) == doc["answer"])
    assert results["results"]["tiny_choice"]["acc,none"] == pytest.approx(correct / len(docs))

    # Generation: the greedy completion, cut at the stop string.
    samples = sorted(results["samples"]["tiny_generate"], key=lambda s: s["doc_id"])
    matches = 0
    for doc, sample in zip(docs, samples):
        ids = torch.tensor([tokenizer.tokenize(f"Q: {doc['question']}\nA:")])
        new = model.generate(ids, max_new_tokens=5, eos_token_id=0)[0, ids.shape[1]:].tolist()
        new = new[:new.index(0)] if 0 in new else new
        text = cut_at_stops(tokenizer.detokenize(new), ["\n"])
        assert sample["filtered_resps"][0] == text
        matches += int(text == doc["choices"][doc["answer"]])
    assert results["results"]["tiny_generate"]["exact_match,none"] == \
        pytest.approx(matches / len(docs))


def test_constructor_needs_exactly_one_model_source(setup):
    model, tokenizer = setup
    with pytest.raises(ValueError, match="exactly one"):
        PonderEvalLM(tokenizer=tokenizer)
    with pytest.raises(ValueError, match="exactly one"):
        PonderEvalLM(pretrained="somewhere", model=model, tokenizer=tokenizer)
