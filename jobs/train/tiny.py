"""Tiny causal LMs built from configs (random weights) and a character tokenizer, saved
with `save_pretrained` so jobs load them through the real `from_pretrained` code.

Nothing can be downloaded on this machine, so demos and tests make their models here:

    make_tiny_model(path, "gpt2")   # or "llama"
"""

from __future__ import annotations

import string
from pathlib import Path

# Every printable ASCII character is a token: any synthetic task text can be encoded.
ALPHABET = string.digits + string.ascii_letters + string.punctuation + " \n"
SPECIAL = ["<pad>", "<unk>", "<eos>"]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + list(ALPHABET))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<pad>", unk_token="<unk>", eos_token="<eos>"
    )


def tiny_config(architecture: str, vocab_size: int, *, layers: int = 4, width: int = 64):
    from transformers import GPT2Config, LlamaConfig

    if architecture == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_positions=256,
            n_embd=width,
            n_layer=layers,
            n_head=4,
            tie_word_embeddings=False,  # pipeline stages own the head separately
            # No dropout: runs split differently (pipeline vs one process) stay comparable.
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            pad_token_id=0,
            eos_token_id=2,
            bos_token_id=2,
        )
    if architecture == "llama":
        return LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=width,
            intermediate_size=width * 2,
            num_hidden_layers=layers,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            tie_word_embeddings=False,
            pad_token_id=0,
            eos_token_id=2,
            bos_token_id=2,
        )
    raise ValueError(f"unknown architecture {architecture!r}: gpt2 or llama")


def make_tiny_model(
    path: Path, architecture: str = "gpt2", *, layers: int = 4, width: int = 64, seed: int = 0
) -> Path:
    """Save a random-weight model and its tokenizer to `path`; return `path`."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    tokenizer = make_tokenizer()
    config = tiny_config(architecture, len(tokenizer), layers=layers, width=width)
    config._attn_implementation = "sdpa"
    model = AutoModelForCausalLM.from_config(config)
    path = Path(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
