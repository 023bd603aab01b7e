"""lm-evaluation-harness (0.4.13) model class for megatron_ponder models.

Registered as ``megatron_ponder``: importing this module is enough for
``lm_eval.simple_evaluate(model="megatron_ponder", model_args="pretrained=FOLDER")`` or an
instance ``PonderEvalLM(model=..., tokenizer=...)``.

Scoring runs the PonderLM-2 forward with the model's fixed J (or the Jacobi options given) on
left-padded batches; each row is scored exactly as it would be alone (padded keys are masked
and positions start at each row's first real token). Requests are sorted by length so a batch
wastes little on padding.
"""

from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
from tqdm import tqdm

from megatron_ponder.hf.loading import load_engine, load_tokenizer
from megatron_ponder.inference.generation import left_pad

MODEL_NAME = "megatron_ponder"
DEFAULT_MAX_GEN_TOKENS = 256

# (context ids, continuation ids); scored as log P(continuation | context).
TokenPair = Tuple[List[int], List[int]]


def _batches(items: List[int], size: int) -> Iterable[List[int]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


class StopStrings:
    """Generation stopping criteria: a row stops once its decoded new text contains any of
    ``stops``."""

    def __init__(self, tokenizer, stops: Sequence[str]):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]

    def __call__(self, new_ids: torch.Tensor) -> torch.Tensor:
        hit = torch.zeros(new_ids.shape[0], dtype=torch.bool)
        if self.stops:
            for row, ids in enumerate(new_ids.tolist()):
                text = self.tokenizer.detokenize(ids)
                hit[row] = any(stop in text for stop in self.stops)
        return hit


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """``text`` up to the earliest occurrence of any stop string."""
    end = len(text)
    for stop in stops:
        if stop:
            found = text.find(stop)
            if found != -1:
                end = min(end, found)
    return text[:end]


@register_model(MODEL_NAME)
class PonderEvalLM(TemplateLM):
    """A ``PonderForCausalLM`` and a tokenizer behind lm-eval's three request types."""

    def __init__(self, pretrained: Optional[str] = None, model=None, tokenizer=None,
                 batch_size=8, max_length: int = 2048, device: Optional[str] = None,
                 dtype: Optional[str] = None, jacobi_iterations=None,
                 jacobi_tolerance: Optional[float] = None,
                 max_jacobi_iterations: Optional[int] = None, seed: int = 1234,
                 **_unused_lm_eval_args):
        """Either ``pretrained`` (a HF folder; tokenizer from ``tokenizer`` or the folder) or a
        loaded ``model`` (PonderForCausalLM) with a ``tokenizer`` (a TextTokenizer, or a path /
        name for ``load_tokenizer``). ``max_length`` is the token context (Pythia: 2048);
        the Jacobi options are ``PonderForCausalLM.forward``'s."""
        super().__init__()
        if (pretrained is None) == (model is None):
            raise ValueError("give exactly one of pretrained= (a folder) or model=")
        if model is None:
            model = load_engine(pretrained, device=device, dtype=dtype)
        if tokenizer is None or isinstance(tokenizer, str):
            tokenizer = load_tokenizer(pretrained, tokenizer)
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = 8 if batch_size in (None, "auto") else int(batch_size)
        self.max_length = int(max_length)
        if jacobi_iterations is not None and str(jacobi_iterations).isdigit():
            jacobi_iterations = int(jacobi_iterations)
        self.jacobi_options = dict(
            jacobi_iterations=jacobi_iterations,
            jacobi_tolerance=None if jacobi_tolerance is None else float(jacobi_tolerance),
            max_jacobi_iterations=None if max_jacobi_iterations is None
            else int(max_jacobi_iterations))
        self._device = next(self.model.parameters()).device
        self.generator = torch.Generator(device=self._device).manual_seed(int(seed))
        self.pass_counts: Dict[str, int] = {"forwards": 0, "passes": 0, "jacobi_iterations": 0}

    # ------------------------------------------------------------------ tokenizer
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eod

    @property
    def tokenizer_name(self) -> str:
        return getattr(self.tokenizer, "name", type(self.tokenizer).__name__)

    def tok_encode(self, string: str, add_special_tokens=None, **kwargs) -> List[int]:
        return list(self.tokenizer.tokenize(string))

    def tok_decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.detokenize(list(ids))

    @property
    def mean_jacobi_iterations(self) -> Optional[float]:
        """Average Jacobi passes per scoring forward so far (None before the first)."""
        forwards = self.pass_counts["forwards"]
        return self.pass_counts["jacobi_iterations"] / forwards if forwards else None

    # ------------------------------------------------------------------ scoring
    @torch.no_grad()
    def _score_pairs(self, pairs: List[TokenPair], desc: str,
                     disable_tqdm: bool) -> List[Tuple[float, bool]]:
        """log P(continuation | context) and whether greedy decoding gives the continuation."""
        results: List[Optional[Tuple[float, bool]]] = [None] * len(pairs)
        # Longest first: similar lengths share a batch, and an out-of-memory shows up at once.
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        progress = tqdm(total=len(pairs), desc=desc, disable=disable_tqdm)
        for batch in _batches(order, self.batch_size):
            inputs, targets = [], []
            for i in batch:
                context, continuation = pairs[i]
                # The model sees at most max_length tokens; the oldest context is cut first.
                whole = (list(context) + list(continuation))[-(self.max_length + 1):]
                inputs.append(whole[:-1])
                scored = min(len(continuation), len(whole) - 1)
                targets.append(whole[len(whole) - scored:] if scored else [])
            ids, mask = left_pad(inputs, self.eot_token_id, self._device)
            # Left padding puts every row's last token in the last column, so all targets lie
            # in the last `scored_width` columns: only those need logits (the vocabulary is big).
            scored_width = max(len(t) for t in targets)
            output = self.model(ids, attention_mask=mask, logits_to_keep=max(scored_width, 1),
                                **self.jacobi_options)
            self._count(output.passes)
            log_probs = F.log_softmax(output.logits, dim=-1)
            for row, i in enumerate(batch):
                target = targets[row]
                if not target:
                    results[i] = (0.0, True)
                    continue
                scored = log_probs[row, scored_width - len(target):]
                wanted = torch.tensor(target, device=scored.device)
                logprob = scored.gather(-1, wanted[:, None]).sum().item()
                greedy = bool((scored.argmax(dim=-1) == wanted).all())
                results[i] = (logprob, greedy)
            progress.update(len(batch))
        progress.close()
        return results

    def _count(self, report) -> None:
        self.pass_counts["forwards"] += 1
        self.pass_counts["passes"] += report.passes
        self.pass_counts["jacobi_iterations"] += report.jacobi_iterations

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        pairs = [(context, continuation) for _, context, continuation in requests]
        results = self._score_pairs(pairs, "loglikelihood", disable_tqdm)
        for (strings, _, _), result in zip(requests, results):
            if strings is not None:
                self.cache_hook.add_partial("loglikelihood", strings, result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List[float]:
        """Whole-document log-likelihood, in windows of ``max_length`` tokens, each token
        predicted once, the first from the end-of-text token."""
        pairs: List[TokenPair] = []
        owners: List[int] = []
        for index, (text,) in enumerate(request.args for request in requests):
            windows = get_rolling_token_windows(
                token_list=self.tok_encode(text), prefix_token=self.prefix_token_id,
                max_seq_len=self.max_length, context_len=1)
            for window in map(make_disjoint_window, windows):
                pairs.append(window)
                owners.append(index)
        scores = self._score_pairs(pairs, "loglikelihood_rolling", disable_tqdm)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, scores):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # ------------------------------------------------------------------ generation
    def generate_until(self, requests, disable_tqdm: bool = False) -> List[str]:
        results: List[Optional[str]] = [None] * len(requests)
        # Requests with the same generation settings can share a batch.
        groups: Dict[str, List[int]] = {}
        for i, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(i)
        progress = tqdm(total=len(requests), desc="generate_until", disable=disable_tqdm)
        for indices in groups.values():
            settings = dict(requests[indices[0]].args[1])
            encoded = {i: self.tok_encode(requests[i].args[0]) for i in indices}
            indices.sort(key=lambda i: -len(encoded[i]))
            for batch in _batches(indices, self.batch_size):
                texts = self._generate_batch([encoded[i] for i in batch], settings)
                for i, text in zip(batch, texts):
                    results[i] = text
                    self.cache_hook.add_partial("generate_until", requests[i].args, text)
                progress.update(len(batch))
        progress.close()
        return results

    @torch.no_grad()
    def _generate_batch(self, contexts: List[List[int]], settings: dict) -> List[str]:
        settings = dict(settings)
        stops = settings.pop("until", None) or []
        if isinstance(stops, str):
            stops = [stops]
        max_new = int(settings.pop("max_gen_toks", DEFAULT_MAX_GEN_TOKENS))
        temperature = float(settings.pop("temperature", 0.0))
        do_sample = bool(settings.pop("do_sample", False)) and temperature > 0
        keep = max(self.max_length - max_new, 1)
        contexts = [c[-keep:] if c else [self.eot_token_id] for c in contexts]
        ids, mask = left_pad(contexts, self.eot_token_id, self._device)
        output = self.model.generate(
            ids, attention_mask=mask, max_new_tokens=max_new, do_sample=do_sample,
            temperature=temperature if do_sample else 1.0,
            top_k=int(settings.pop("top_k", 0) or 0),
            top_p=float(settings.pop("top_p", 1.0) or 1.0),
            eos_token_id=self.eot_token_id, generator=self.generator,
            stopping_criteria=StopStrings(self.tokenizer, stops),
            return_dict_in_generate=True, **self.jacobi_options)
        self._count(output.prefill)
        texts = []
        for row in output.sequences[:, ids.shape[1]:].tolist():
            if self.eot_token_id in row:
                row = row[:row.index(self.eot_token_id)]
            texts.append(cut_at_stops(self.tok_decode(row), stops))
        return texts
