"""Datasets for the training kinds: JSONL records in, fixed-length token blocks out.

A line is `{"text": ...}` (every token is learned) or `{"prompt": ..., "completion": ...}`
(only the completion is learned: prompt labels are -100). `synthetic_addition` writes a
task with a learnable signal for demos, tests and benchmarks.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

IGNORE = -100


@dataclass(frozen=True)
class Example:
    input_ids: list[int]
    labels: list[int]


def read_jsonl(path: Path) -> list[dict]:
    records = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not JSON: {e.msg}") from None
        if not isinstance(record, dict) or not (
            isinstance(record.get("text"), str)
            or (isinstance(record.get("prompt"), str) and isinstance(record.get("completion"), str))
        ):
            raise ValueError(f"{path}:{number}: expected {{text}} or {{prompt, completion}}")
        records.append(record)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def encode(record: dict, tokenizer, max_len: int) -> Example:
    """Token ids padded/cut to `max_len`, with labels for the tokens to learn."""
    if "text" in record:
        ids = [*tokenizer.encode(record["text"], add_special_tokens=False), tokenizer.eos_token_id]
        labels = list(ids)
    else:
        prompt = tokenizer.encode(record["prompt"], add_special_tokens=False)
        completion = tokenizer.encode(record["completion"], add_special_tokens=False)
        ids = prompt + completion + [tokenizer.eos_token_id]
        labels = [IGNORE] * len(prompt) + completion + [tokenizer.eos_token_id]
    ids, labels = ids[:max_len], labels[:max_len]
    pad = max_len - len(ids)
    return Example(ids + [tokenizer.pad_token_id] * pad, labels + [IGNORE] * pad)


def split(records: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """A deterministic train/eval split (the same on every worker and every restart)."""
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_eval = max(1, int(len(records) * eval_fraction))
    return [records[i] for i in order[n_eval:]], [records[i] for i in order[:n_eval]]


def synthetic_addition(path: Path, n: int = 2000, seed: int = 0) -> Path:
    """`12+7=` → `19`: a prompt/completion task a tiny model learns in a few hundred steps."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        a, b = rng.randrange(50), rng.randrange(50)
        lines.append(json.dumps({"prompt": f"{a}+{b}=", "completion": str(a + b)}))
    Path(path).write_text("\n".join(lines) + "\n")
    return Path(path)
