"""Text generation for serve jobs: one base model, LoRA adapters attached with PEFT. No Ray.

`LoraEngine` loads the base model once and keeps adapters on it by name. PEFT's active
adapter is state on the shared model, so one lock serialises generation (and adapter
loading) per engine: a replica runs one generation at a time, and Serve spreads load
over replicas. Greedy decoding (temperature 0) is `model.generate(do_sample=False)`, so its
tokens are exactly those of `PeftModel.from_pretrained(base, adapter)` + `generate`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (eos or a stop string) or "length"
    seconds: float  # time spent generating, lock wait excluded


class PromptTooLong(ValueError):
    """The prompt leaves no room in the model's context for a completion."""


class LoraEngine:
    """A base causal LM with named LoRA adapters, generating for one model name at a time.

    `base_name` generates with no adapter; every name in `adapters` ({name: folder})
    generates with that adapter. Adapters load on first use (or by `load`) and can be
    released again (`release`) when the replica keeps too many.
    """

    def __init__(self, base_path: str | Path, base_name: str, adapters: dict[str, str]):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(1)  # one replica per leased GPU/CPU slot; no oversubscription
        self.base_name = base_name
        self.adapter_paths = dict(adapters)
        if base_name in self.adapter_paths:
            raise ValueError(f"adapter name {base_name!r} is the base model's name")
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(str(base_path))
        base = AutoModelForCausalLM.from_pretrained(str(base_path))
        self.model = base.to(self.device).eval()
        self.context_length = _context_length(base.config)
        self._lock = threading.Lock()
        self._loaded: set[str] = set()
        self._released: set[str] = set()

    @property
    def names(self) -> list[str]:
        return [self.base_name, *self.adapter_paths]

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def load(self, name: str) -> None:
        """Attach adapter `name` (a no-op for the base model or an attached adapter)."""
        with self._lock:
            self._attach(name)

    def release(self, name: str) -> None:
        """Mark adapter `name` for removal; it is detached before the next generation.

        Never blocks, so it is safe from `__del__` and Serve's unload hook: the adapter
        may be in use by a generation holding the lock right now.
        """
        if name != self.base_name:
            self._released.add(name)

    def generate(
        self,
        name: str,
        prompt: str,
        params: SamplingParams,
        on_text: Callable[[str], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> Generation:
        """Complete `prompt` with model `name`; `on_text` gets the text piece by piece.

        The pieces concatenate to the returned text. `cancel` (set from another thread)
        ends generation early, e.g. when a streaming client went away.
        """
        if name not in self.names:
            raise KeyError(name)
        encoded = self.tokenizer(prompt, return_tensors="pt")
        input_ids = encoded["input_ids"].to(self.device)
        prompt_tokens = input_ids.shape[1]
        max_new = min(params.max_tokens, self._room(prompt_tokens, params.max_tokens))
        text = TextAccumulator(self._decode, params.stop)
        watcher = _Watcher(prompt_tokens, text, on_text, cancel)
        kwargs = {
            "input_ids": input_ids,
            "attention_mask": encoded["attention_mask"].to(self.device),
            "max_new_tokens": max_new,
            "do_sample": params.temperature > 0,
            "pad_token_id": self._pad_token_id(),
            "stopping_criteria": StoppingCriteriaList([watcher]),
        }
        if params.temperature > 0:
            kwargs |= {"temperature": params.temperature, "top_p": params.top_p}
        with self._lock:
            self._purge_released()
            self._attach(name)
            started = time.perf_counter()
            if params.seed is not None:
                torch.manual_seed(params.seed)
            with torch.inference_mode(), self._active(name):
                output = self.model.generate(**kwargs)
            seconds = time.perf_counter() - started
        # The watcher saw every token but the last (criteria run after each token is
        # appended, and generate may stop on eos/length before the next call).
        watcher.catch_up(output[0])
        tail = text.take(final=True)
        if tail and on_text:
            on_text(tail)
        generated = watcher.seen
        eos = self._eos_ids()
        hit_eos = bool(generated) and generated[-1] in eos
        finish = "stop" if text.stopped or hit_eos else "length"
        return Generation(text.text, prompt_tokens, len(generated), finish, seconds)

    def check_prompt(self, prompt: str) -> int:
        """The prompt's token count; raises PromptTooLong if no completion fits after it."""
        tokens = self.count_tokens(prompt)
        self._room(tokens, 1)
        return tokens

    # -- helpers, in call order ------------------------------------------------------

    def _room(self, prompt_tokens: int, wanted: int) -> int:
        """How many tokens fit after the prompt in the model's context."""
        if prompt_tokens == 0:
            raise PromptTooLong("the prompt has no tokens")
        if not self.context_length:
            return wanted
        room = self.context_length - prompt_tokens
        if room < 1:
            raise PromptTooLong(
                f"the prompt has {prompt_tokens} tokens and the model's context is "
                f"{self.context_length}: shorten the prompt"
            )
        return room

    def _decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def _pad_token_id(self) -> int | None:
        tok = self.tokenizer
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _purge_released(self) -> None:
        for name in list(self._released):
            self._released.discard(name)
            # PEFT wants at least one adapter on a PeftModel: keep the last one (cheap).
            if name in self._loaded and len(self._loaded) > 1:
                self.model.delete_adapter(name)
                self._loaded.discard(name)
                log.info("released adapter %s", name)

    def _attach(self, name: str) -> None:
        if name == self.base_name or name in self._loaded:
            self._released.discard(name)
            return
        from peft import PeftModel

        path = self.adapter_paths[name]
        if not self._loaded:
            self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
        else:
            self.model.load_adapter(path, adapter_name=name)
        self.model.to(self.device).eval()
        self._loaded.add(name)
        self._released.discard(name)
        log.info("attached adapter %s from %s", name, path)

    def _active(self, name: str):
        """A context in which `self.model` is model `name`."""
        if not self._loaded:  # still the plain base model
            return nullcontext()
        if name == self.base_name:
            return self.model.disable_adapter()
        self.model.set_adapter(name)
        return nullcontext()

    def _eos_ids(self) -> set[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        if eos is None:
            return set()
        return set(eos) if isinstance(eos, list | tuple) else {eos}


class TextAccumulator:
    """Token ids in, text out: incremental detokenization with stop strings.

    Decodes the whole completion each time (so multi-token characters come out whole)
    and hands out only text that can no longer change: text that could still become a
    stop string, or that ends in an incomplete character, is held back until it can't.
    """

    def __init__(self, decode: Callable[[Sequence[int]], str], stop: Sequence[str] = ()):
        self._decode = decode
        self._stop = tuple(stop)
        self._hold = max((len(s) for s in self._stop), default=1) - 1
        self._ids: list[int] = []
        self._text = ""
        self._emitted = 0
        self.stopped = False  # a stop string was found

    def add(self, ids: Sequence[int]) -> None:
        if self.stopped:
            return
        self._ids.extend(ids)
        text = self._decode(self._ids)
        cut = min((i for s in self._stop if (i := text.find(s)) >= 0), default=-1)
        if cut >= 0:
            text = text[:cut]
            self.stopped = True
        self._text = text

    @property
    def text(self) -> str:
        return self._text

    def take(self, final: bool = False) -> str:
        """The text not handed out yet that is safe to hand out now (all of it if final)."""
        end = len(self._text)
        if not (final or self.stopped):
            end -= self._hold
            while end > self._emitted and self._text[end - 1] == "\ufffd":
                end -= 1
        if end <= self._emitted:
            return ""
        piece = self._text[self._emitted : end]
        self._emitted = end
        return piece


class _Watcher(StoppingCriteria):
    """Runs after each generated token: feeds the text, streams it, stops on a stop
    string or cancel. It never changes which tokens are chosen."""

    def __init__(self, prompt_tokens, text: TextAccumulator, on_text, cancel):
        self.prompt_tokens = prompt_tokens
        self.text = text
        self.on_text = on_text
        self.cancel = cancel
        self.seen: list[int] = []

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        self.catch_up(input_ids[0])
        done = self.text.stopped or (self.cancel is not None and self.cancel.is_set())
        return torch.full((input_ids.shape[0],), done, dtype=torch.bool, device=input_ids.device)

    def catch_up(self, sequence: torch.Tensor) -> None:
        new = sequence[self.prompt_tokens + len(self.seen) :].tolist()
        if not new or self.text.stopped:
            return
        self.seen.extend(new)
        self.text.add(new)
        if self.on_text and (piece := self.text.take()):
            self.on_text(piece)


def _context_length(config) -> int | None:
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
