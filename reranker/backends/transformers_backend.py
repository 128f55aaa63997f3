"""Hugging Face transformers backend: batched chat generation on CPU or GPU.

One ``generate()`` call tokenises every prompt with the chat template, sorts the prompts by length
(so a batch holds prompts of similar length and little padding), packs them into batches under a
token budget, runs each batch through ``model.generate`` with LEFT padding, and returns the answers
in the original order. Under greedy decoding a prompt gets the same text whether it runs alone or
in a batch: the attention mask hides the padding and position ids are derived from it.

The passes that only read scores (query likelihood, inline read-out, fixed-feed slots) run one forward of
the decoder stack. ``engine`` picks what runs it: ``"torch"``, ``"openvino"`` (``OpenVINODecoder``), or
``"auto"``, OpenVINO in bfloat16 where the model runs in bfloat16 on a CPU and OpenVINO is installed
(1.1-1.4x faster than torch there, docs/results-engines.md), else torch. Generation is always torch.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from typing import Any

from grouprank.errors import InputError, NotFoundError, require
from grouprank.loading import model_loading
from grouprank.precision import resolve_dtype
from grouprank.progress import progress_bar
from reranker.backends.base import Backend, Completion, GenerationConfig, Messages, answer_prefix, prepend_prefixes
from reranker.backends.batching import forward_overhead, plan_batches, plan_forward_batches
from reranker.backends.torch_readout import load_head, readout_tensors, right_padded
from reranker.likelihood import Likelihood, mean_logprob, tokenised_pairs
from reranker.models import resolve_model
from reranker.readout import ReadoutAnswer, ReadoutLayout, ReadoutRow
from reranker.slots import (
    FIXED_SCORE,
    ScoreTokens,
    SlotAnswer,
    check_feed,
    greedy_score,
    score_distribution,
    score_tokens,
)

DEFAULT_BATCH_TOKENS = {"cpu": 16_384, "cuda": 65_536}
ENGINES = ("auto", "torch", "openvino")
log = logging.getLogger(__name__)


def resolve_engine(engine: str, device: str, dtype: Any) -> str:
    """``"torch"`` or ``"openvino"`` for the score-reading passes (see the module docstring)."""
    import torch

    if engine not in ENGINES:
        raise InputError(f"unknown engine {engine!r}; choose from {', '.join(ENGINES)}", field="engine")
    if engine == "openvino" and device != "cpu":
        raise InputError(f"the openvino engine runs on the CPU, not on {device}", field="engine")
    if engine != "auto":
        return engine
    native = device == "cpu" and dtype == torch.bfloat16  # resolve_dtype picks bf16 where the CPU has it
    return "openvino" if native and importlib.util.find_spec("openvino") is not None else "torch"


def truncate_at_stop(text: str, stop: list[str]) -> tuple[str, bool]:
    """``text`` cut before the earliest stop string, and whether one was found."""
    cut = min((pos for s in stop if s and (pos := text.find(s)) >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


class TransformersBackend(Backend):
    """Any causal LM with a chat template: a Hugging Face id, a local folder or an alias.

    ``device`` and ``dtype`` default to ``"auto"``: CUDA when available, in bfloat16 wherever the
    hardware computes it natively (CUDA GPUs, CPUs with AVX512-BF16 or AMX), otherwise float32.
    ``max_batch_tokens`` bounds one ``model.generate`` call (see
    ``plan_batches``); it defaults to 16k tokens on CPU and 64k on CUDA.
    ``chat_template_kwargs`` go to ``apply_chat_template`` (e.g. ``{"enable_thinking": False}``).
    """

    name = "transformers"

    def __init__(
        self,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch_tokens: int | None = None,
        max_batch_size: int = 32,
        chat_template_kwargs: dict[str, Any] | None = None,
        engine: str = "auto",
    ) -> None:
        import torch

        transformers = require("transformers", "llm")
        self.model = model
        self.path = resolve_model(model)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        torch_dtype = resolve_dtype(dtype, self.device.type)
        try:
            self.tokenizer = transformers.AutoTokenizer.from_pretrained(self.path)
            with model_loading():
                self.lm = transformers.AutoModelForCausalLM.from_pretrained(
                    self.path, dtype=torch_dtype, device_map=str(self.device)
                )
        except OSError as exc:
            raise NotFoundError(
                f"cannot load model {model!r} (resolved to {self.path!r}): {exc}. Offline, use a "
                "local folder or an alias such as 'smollm2-135m-instruct'."
            ) from exc
        self.lm.eval()
        if not self.tokenizer.chat_template:
            raise NotFoundError(f"model {model!r} has no chat template: use an instruct/chat model")
        self.max_batch_tokens = max_batch_tokens or DEFAULT_BATCH_TOKENS.get(self.device.type, 16_384)
        self.max_batch_size = max_batch_size
        self.chat_template_kwargs = dict(chat_template_kwargs or {})
        self.readout_head = load_head(self.path)
        self.engine = resolve_engine(engine, self.device.type, torch_dtype)
        self.forward_overhead = forward_overhead(self.device.type)
        """One more forward call's cost in padded tokens (``plan_forward_batches``); huge = one padded batch."""
        self._openvino: Any = None
        self._openvino_lock = threading.Lock()
        self._set_special_ids()

    @classmethod
    def from_model(cls, lm: Any, tokenizer: Any, name: str = "in-memory", max_batch_tokens: int | None = None,
                   max_batch_size: int = 32) -> TransformersBackend:
        """A backend around a model already in memory (e.g. one being trained)."""
        self = cls.__new__(cls)
        self.model, self.path, self.lm, self.tokenizer = name, name, lm, tokenizer
        self.device = next(lm.parameters()).device
        self.max_batch_tokens = max_batch_tokens or DEFAULT_BATCH_TOKENS.get(self.device.type, 16_384)
        self.max_batch_size = max_batch_size
        self.chat_template_kwargs = {}
        self.readout_head = None
        self.engine = "torch"  # a model being trained: its forward passes need torch
        self.forward_overhead = forward_overhead(self.device.type)
        self._set_special_ids()
        return self

    def _set_special_ids(self) -> None:
        eos = self.lm.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        self.eos_ids: list[int] = [eos] if isinstance(eos, int) else list(eos or [])
        pad = self.tokenizer.pad_token_id
        self.pad_id: int = pad if pad is not None else (self.eos_ids[0] if self.eos_ids else 0)

    # -- tokens -----------------------------------------------------------------------------------

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode(self, messages: Messages) -> list[int]:
        """Token ids of one chat prompt, with the template's generation prompt appended (or, when the
        prompt ends with an answer prefix, with that assistant message left open to continue)."""
        prefill = bool(answer_prefix(messages))
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=not prefill, continue_final_message=prefill, tokenize=False,
            **self.chat_template_kwargs,
        )
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    # -- generation -------------------------------------------------------------------------------

    def generate(
        self, prompts: list[Messages], config: GenerationConfig, deadline: float | None = None
    ) -> list[Completion]:
        import torch

        results: list[Completion | None] = [None] * len(prompts)
        encoded: dict[int, list[int]] = {}
        for i, messages in enumerate(prompts):
            try:
                encoded[i] = self.encode(messages)
            except Exception as exc:  # a malformed prompt fails alone
                results[i] = Completion(text="", error=f"cannot apply the chat template: {exc}")
        indices = list(encoded)
        plan = plan_batches(
            [len(encoded[i]) for i in indices],
            config.max_new_tokens,
            self.max_batch_tokens,
            self.max_batch_size,
        )
        batches = [[indices[j] for j in batch] for batch in plan]
        if config.seed is not None and not config.greedy:
            # one seed per call: reproducible for the same prompts, as long as no other thread of this
            # process draws from torch's global generator meanwhile (transformers samples from it)
            torch.manual_seed(config.seed)
        if len(batches) <= 1:  # one batch: no progress bar
            for batch in batches:
                self._run_batch(batch, encoded, config, deadline, results)
        else:
            with progress_bar("generating", len(encoded)) as bar:
                for batch in batches:
                    self._run_batch(batch, encoded, config, deadline, results)
                    bar.advance(len(batch))
        done = [r if r is not None else Completion(text="", error="not generated") for r in results]
        return prepend_prefixes(prompts, done)

    def _run_batch(
        self,
        batch: list[int],
        encoded: dict[int, list[int]],
        config: GenerationConfig,
        deadline: float | None,
        results: list[Completion | None],
    ) -> None:
        """Generate one batch into ``results``; on an exception retry it in halves."""
        if self.expired(deadline):
            for i in batch:
                results[i] = Completion(text="", prompt_tokens=len(encoded[i]), error="deadline")
            return
        try:
            completions = self._generate_batch([encoded[i] for i in batch], config, deadline)
        except Exception as exc:  # e.g. out of memory: smaller batches may fit
            self._free_memory()
            if len(batch) == 1:
                i = batch[0]
                results[i] = Completion(text="", prompt_tokens=len(encoded[i]), error=f"{type(exc).__name__}: {exc}")
                return
            half = len(batch) // 2
            self._run_batch(batch[:half], encoded, config, deadline, results)
            self._run_batch(batch[half:], encoded, config, deadline, results)
            return
        for i, completion in zip(batch, completions, strict=True):
            results[i] = completion

    def _free_memory(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _generation_config(self, config: GenerationConfig, deadline: float | None):
        from transformers import GenerationConfig as HFGenerationConfig

        settings: dict[str, Any] = {
            "max_new_tokens": config.max_new_tokens,
            "eos_token_id": self.eos_ids or None,
            "pad_token_id": self.pad_id,
            "do_sample": not config.greedy,
        }
        if config.greedy:
            settings.update(temperature=None, top_p=None, top_k=None)
        else:
            settings.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k or 0)
        if config.stop:
            settings["stop_strings"] = list(config.stop)
        if deadline is not None:
            settings["max_time"] = max(0.0, deadline - time.monotonic())
        return HFGenerationConfig(**settings)

    def _generate_batch(
        self, token_lists: list[list[int]], config: GenerationConfig, deadline: float | None
    ) -> list[Completion]:
        import torch

        width = max(len(ids) for ids in token_lists)
        input_ids = torch.full((len(token_lists), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(token_lists), width), dtype=torch.long)
        for row, ids in enumerate(token_lists):  # left padding: every prompt ends at column width-1
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, width - len(ids) :] = 1
        extra = {"tokenizer": self.tokenizer} if config.stop else {}
        with torch.inference_mode():
            output = self.lm.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention_mask.to(self.device),
                generation_config=self._generation_config(config, deadline),
                **extra,
            )
        new_tokens = output[:, width:].tolist()
        out_of_time = self.expired(deadline)
        return [
            self._completion(len(ids), tokens, config, out_of_time)
            for ids, tokens in zip(token_lists, new_tokens, strict=True)
        ]

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    def _completion(
        self, prompt_tokens: int, tokens: list[int], config: GenerationConfig, out_of_time: bool
    ) -> Completion:
        """Decode one row of new tokens: cut after EOS (counted) and at the first stop string."""
        ended = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
        if ended is not None:
            tokens = tokens[: ended + 1]
        text, stopped = truncate_at_stop(self._decode(tokens), config.stop)
        if stopped:
            # A row stopped by a stop string is padded afterwards: count only the tokens up to the
            # one that completed the stop string.
            while len(tokens) > 1 and truncate_at_stop(self._decode(tokens[:-1]), config.stop)[1]:
                tokens = tokens[:-1]
        reason = "stop" if ended is not None or stopped else "length" if len(tokens) >= config.max_new_tokens else None
        if out_of_time and reason is None:  # cut by the deadline, not finished
            return Completion(text="", prompt_tokens=prompt_tokens, completion_tokens=len(tokens), error="deadline")
        return Completion(text=text, prompt_tokens=prompt_tokens, completion_tokens=len(tokens), finish_reason=reason)

    # -- slot decoding ----------------------------------------------------------------------------

    @property
    def score_tokens(self) -> ScoreTokens:
        """How this tokenizer writes the scores 0..10 (see ``reranker.slots``)."""
        if not hasattr(self, "_score_tokens"):
            self._score_tokens = score_tokens(lambda text: self.tokenizer(text, add_special_tokens=False)["input_ids"])
        return self._score_tokens

    def _ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def score_slots(
        self, prompts: list[Messages], skeletons: list[list[str]], deadline: float | None = None,
        feed: str = "greedy",
    ) -> list[SlotAnswer]:
        """Slot decoding (``reranker.slots``): feed prompt ``i``'s answer skeleton ``skeletons[i]`` and read
        the distribution of every score 0..10 at each slot. A prompt's own answer prefix is replaced by the
        skeleton. Prompts are batched like ``generate``. ``feed="greedy"``: one forward pass per slot
        position (KV cache), each with a lookahead token when "10" is two tokens; ``feed="fixed"``: the
        whole skeleton with ``FIXED_SCORE`` after every slot in one forward pass."""
        check_feed(feed)
        results: list[SlotAnswer | None] = [None] * len(prompts)
        encoded: dict[int, list[int]] = {}
        for i, messages in enumerate(prompts):
            plain = messages[:-1] if answer_prefix(messages) else messages
            try:
                encoded[i] = self.encode(plain)
            except Exception as exc:  # a malformed prompt fails alone
                results[i] = SlotAnswer(error=f"cannot apply the chat template: {exc}")
        indices = list(encoded)
        per_slot = 8  # ', "[12]": 7' is about 7 tokens; only the budget of a batch depends on it
        longest = max((len(s) for s in skeletons), default=1)
        plan = plan_batches([len(encoded[i]) for i in indices], per_slot * longest,
                            self.max_batch_tokens, self.max_batch_size)
        for batch in ([indices[j] for j in b] for b in plan):
            if self.expired(deadline):
                for i in batch:
                    results[i] = SlotAnswer(prompt_tokens=len(encoded[i]), error="deadline")
                continue
            try:
                score = self._score_fixed if feed == "fixed" else self._score_batch
                answers = score([encoded[i] for i in batch], [skeletons[i] for i in batch], deadline)
            except Exception as exc:  # e.g. out of memory: report it for these prompts
                self._free_memory()
                answers = [SlotAnswer(prompt_tokens=len(encoded[i]), error=f"{type(exc).__name__}: {exc}")
                           for i in batch]
            for i, answer in zip(batch, answers, strict=True):
                results[i] = answer
        return [r if r is not None else SlotAnswer(error="not scored") for r in results]

    def _decoder_and_head(self) -> tuple[Any, Any]:
        """The decoder stack and the LM head (through a peft wrapper): forward passes that need logits at
        a few positions only run the stack and apply the head there."""
        causal = self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm
        decoder, head = getattr(causal, causal.base_model_prefix), causal.get_output_embeddings()
        if getattr(self, "engine", "torch") == "openvino":
            return self._openvino_decoder(decoder), head
        return decoder, head

    def _openvino_decoder(self, decoder: Any) -> Any:
        """The decoder stack compiled by OpenVINO, built at the first score-reading pass. If it cannot be
        built the backend says why once and stays on torch."""
        import torch

        with self._openvino_lock:
            if self._openvino is None:
                from reranker.backends.openvino_decoder import OpenVINODecoder

                precision = "bf16" if self.lm.dtype == torch.bfloat16 else "f32"
                try:
                    self._openvino = OpenVINODecoder(decoder, self.path, precision, self.lm.dtype)
                except Exception as exc:  # e.g. an architecture OpenVINO cannot convert
                    log.warning("OpenVINO could not compile %s (%s: %s); reading scores with torch",
                                self.model, type(exc).__name__, exc)
                    self.engine, self._openvino = "torch", None
                    return decoder
            return self._openvino

    def _forward_plan(self, lengths: list[int]) -> list[list[int]]:
        """Batches for a forward-only pass: length-sorted, split where padding costs more than a call."""
        return plan_forward_batches(lengths, self.max_batch_tokens, self.max_batch_size, self.forward_overhead)

    def _score_fixed(
        self, token_lists: list[list[int]], skeletons: list[list[str]], deadline: float | None
    ) -> list[SlotAnswer]:
        """Read every slot of one batch in a single forward pass: each row is its prompt, then each
        skeleton piece followed by ``FIXED_SCORE``'s tokens (right padding: a row's positions and
        attention do not depend on the batch). Logits are computed only at the slots and, where "10" is
        two tokens, at the fed "1" (its next token is P("0" | "1"))."""
        import torch

        del deadline  # one pass: nothing to cut short
        tokens = self.score_tokens
        split = tokens.mode == "split"
        fill = list(tokens.ids[FIXED_SCORE])
        rows, slots, ones = [], [], []
        for ids, skeleton in zip(token_lists, skeletons, strict=True):
            row, at, after = list(ids), [], []
            for piece in skeleton:
                row += self._ids(piece)
                at.append(len(row) - 1)
                after.append(len(row))  # the fed "1"
                row += fill
            rows.append(row)
            slots.append(at)
            ones.append(after)
        ids, mask = right_padded(rows, self.pad_id)
        with torch.inference_mode():
            decoder, head = self._decoder_and_head()
            hidden = decoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            r_idx = torch.tensor([r for r, at in enumerate(slots) for _ in at], device=self.device)
            c_idx = torch.tensor([c for at in slots for c in at], device=self.device)
            first = torch.softmax(head(hidden[r_idx, c_idx]).float(), dim=-1)[:, tokens.first].tolist()
            p10: list[float | None] = [None] * len(first)
            if split:
                o_idx = torch.tensor([c for after in ones for c in after], device=self.device)
                p10 = torch.softmax(head(hidden[r_idx, o_idx]).float(), dim=-1)[:, tokens.zero].tolist()
        answers, k = [], 0
        for row, skeleton in zip(rows, skeletons, strict=True):
            n = len(skeleton)
            dists = [score_distribution(first[k + j], p10[k + j]) for j in range(n)]
            k += n
            prompt = len(row) - sum(len(self._ids(piece)) + len(fill) for piece in skeleton)
            answers.append(SlotAnswer(distributions=dists, prompt_tokens=prompt, completion_tokens=len(row) - prompt))
        return answers

    # -- the inline read-out ------------------------------------------------------------------------

    def readout_layout(self, query_after: bool = True) -> ReadoutLayout:
        """The read-out layout for this tokenizer (``reranker.readout``), built once per option."""
        layouts = self.__dict__.setdefault("_layouts", {})
        if query_after not in layouts:
            layouts[query_after] = ReadoutLayout(self._ids, query_after)
        return layouts[query_after]

    def score_readout(
        self, groups: list[tuple[str, list[str]]], deadline: float | None = None, query_after: bool = True,
        likelihood: bool = False,
    ) -> list[ReadoutAnswer]:
        """The inline read-out (``reranker.readout``) of each ``(query, texts)`` group: one forward pass
        per batch, rows sorted by length and right-padded, logits only where read."""
        layout = self.readout_layout(query_after)
        rows = [layout.row(query, texts) for query, texts in groups]
        results: list[ReadoutAnswer | None] = [None] * len(rows)
        for batch in self._forward_plan([len(r.ids) for r in rows]):
            if self.expired(deadline):
                for i in batch:
                    results[i] = ReadoutAnswer(prompt_tokens=len(rows[i].ids), error="deadline")
                continue
            try:
                answers = self._readout_batch([rows[i] for i in batch], layout, likelihood)
            except Exception as exc:  # e.g. out of memory: report it for these groups
                self._free_memory()
                answers = [ReadoutAnswer(prompt_tokens=len(rows[i].ids), error=f"{type(exc).__name__}: {exc}")
                           for i in batch]
            for i, answer in zip(batch, answers, strict=True):
                results[i] = answer
        return [r if r is not None else ReadoutAnswer(error="not scored") for r in results]

    def _readout_batch(self, rows: list[ReadoutRow], layout: ReadoutLayout,
                       likelihood: bool = False) -> list[ReadoutAnswer]:
        import torch

        ids, mask = right_padded([r.ids for r in rows], self.pad_id)
        with torch.inference_mode():
            decoder, head = self._decoder_and_head()
            hidden = decoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            out = readout_tensors(hidden, head.weight, rows, layout.tokens, likelihood, self.readout_head)
            dists = out.distributions.tolist() if out.distributions is not None else []
            values = out.expected.tolist() if out.distributions is None else []
            lls = out.likelihood.tolist() if out.likelihood is not None else []
        answers, k = [], 0
        for row in rows:
            n = row.size
            answers.append(ReadoutAnswer(distributions=dists[k:k + n], likelihoods=lls[k:k + n],
                                         values=values[k:k + n], prompt_tokens=len(row.ids)))
            k += n
        return answers

    def score_likelihood(
        self, prompts: list[str], continuations: list[str], deadline: float | None = None
    ) -> list[Likelihood]:
        """Mean log-probability of each continuation after its prompt (plain text, no chat template).
        Pairs are sorted by length and split into batches where padding costs more than a call
        (``plan_forward_batches``); one forward pass per batch, right padding, and logits only at the
        continuation's positions."""
        results, rows = tokenised_pairs(self._ids, prompts, continuations)
        indices = list(rows)
        plan = self._forward_plan([len(rows[i][0]) + len(rows[i][1]) for i in indices])
        for batch in ([indices[j] for j in b] for b in plan):
            if self.expired(deadline):
                for i in batch:
                    results[i] = Likelihood(prompt_tokens=len(rows[i][0]), error="deadline")
                continue
            try:
                values = self._likelihood_batch([rows[i] for i in batch])
            except Exception as exc:  # e.g. out of memory: report it for these pairs
                self._free_memory()
                values = [Likelihood(error=f"{type(exc).__name__}: {exc}") for _ in batch]
            for i, value in zip(batch, values, strict=True):
                results[i] = value
        return [r if r is not None else Likelihood(error="not scored") for r in results]

    def _likelihood_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[Likelihood]:
        import torch

        rows = [head + tail for head, tail in pairs]
        ids, mask = right_padded(rows, self.pad_id)
        # the hidden state before each continuation token predicts it
        r_idx = [r for r, (head, tail) in enumerate(pairs) for _ in tail]
        c_idx = [len(head) - 1 + k for head, tail in pairs for k in range(len(tail))]
        targets = torch.tensor([t for _, tail in pairs for t in tail], device=self.device)
        with torch.inference_mode():
            decoder, head = self._decoder_and_head()
            hidden = decoder(input_ids=ids.to(self.device), attention_mask=mask.to(self.device)).last_hidden_state
            logits = head(hidden[torch.tensor(r_idx), torch.tensor(c_idx)]).float()
            token_lp = (logits.gather(1, targets[:, None]).squeeze(1) - torch.logsumexp(logits, dim=-1)).tolist()
        out, k = [], 0
        for head, tail in pairs:
            out.append(Likelihood(mean_logprob=mean_logprob(token_lp[k:k + len(tail)]), tokens=len(tail),
                                  prompt_tokens=len(head)))
            k += len(tail)
        return out

    def _score_batch(
        self, token_lists: list[list[int]], skeletons: list[list[str]], deadline: float | None
    ) -> list[SlotAnswer]:
        """Slot-decode one batch, one forward pass per slot. Rows are right-aligned: what a row lacks at a
        step (left padding, the hole beside a one-token score when another row feeds "10", a row whose
        skeleton has ended) is a masked hole, and each row's position ids count only its real tokens, so
        a row's scores do not depend on the rest of the batch."""
        import torch
        from transformers import DynamicCache

        tokens = self.score_tokens
        split = tokens.mode == "split"
        first_ids = torch.tensor(tokens.first, device=self.device)
        rows, steps = len(token_lists), max(len(s) for s in skeletons)
        answers = [SlotAnswer(prompt_tokens=len(ids)) for ids in token_lists]
        cache = DynamicCache()
        mask = torch.zeros((rows, 0), dtype=torch.long, device=self.device)
        seen = torch.zeros(rows, dtype=torch.long, device=self.device)  # real tokens per row so far
        fed: list[list[int | None]] = [[] for _ in range(rows)]  # the previous slot's score tokens
        lookahead = [tokens.one] if split else []
        for step in range(steps):
            if step > 0 and self.expired(deadline):
                break
            rows_in: list[list[int | None]] = []
            for r in range(rows):
                head = token_lists[r] if step == 0 else fed[r]
                active = step < len(skeletons[r])
                piece = self._ids(skeletons[r][step]) if active else []
                rows_in.append([*head, *piece, *lookahead] if active else [None] * (len(head) + 1))
            width = max(len(x) for x in rows_in)
            ids = torch.full((rows, width), self.pad_id, dtype=torch.long)
            new_mask = torch.zeros((rows, width), dtype=torch.long)
            for r, row in enumerate(rows_in):  # right-aligned; None is a masked hole
                for c, t in enumerate(row, width - len(row)):
                    if t is not None:
                        ids[r, c], new_mask[r, c] = t, 1
            new_mask = new_mask.to(self.device)
            positions = (seen[:, None] + torch.cumsum(new_mask, dim=1) - 1).clamp(min=0)
            mask = torch.cat([mask, new_mask], dim=1)
            with torch.inference_mode():
                out = self.lm(input_ids=ids.to(self.device), attention_mask=mask, position_ids=positions,
                              cache=cache, use_cache=True, logits_to_keep=2 if split else 1)
            logprobs = torch.log_softmax(out.logits.float(), dim=-1)
            cache = getattr(out, "cache", None) or out.past_key_values or cache
            seen = seen + new_mask.sum(dim=1)
            first = logprobs[:, -2 if split else -1].index_select(1, first_ids).exp().tolist()
            p10 = logprobs[:, -1, tokens.zero].exp().tolist() if split else [None] * rows
            if split:  # forget the lookahead "1": it was only there to read P("0" | "1")
                cache.crop(-1)
                lookahead_mask = mask[:, -1]
                mask, seen = mask[:, :-1], seen - lookahead_mask
            for r in range(rows):
                if step >= len(skeletons[r]):
                    fed[r] = [None]
                    continue
                dist = score_distribution(first[r], p10[r])
                score_ids = list(tokens.ids[greedy_score(dist)])
                answers[r].distributions.append(dist)
                answers[r].completion_tokens += len(self._ids(skeletons[r][step])) + len(score_ids)
                fed[r] = score_ids + [None] * ((2 if split else 1) - len(score_ids))
        for answer, skeleton in zip(answers, skeletons, strict=True):
            if not answer.distributions and skeleton:
                answer.error = "deadline"
        return answers
