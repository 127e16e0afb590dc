"""A tiny randomly initialised BERT with a real WordPiece tokenizer, saved like a real base
(save_pretrained with safetensors), for tests where model quality does not matter.

Import from tests (tests/conftest.py belongs to the registry's tests): `from tests.support.tinymodel
import make_tiny_bert` or via the `tiny_bert_dir` helper.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
# whole words the tests use, so texts tokenize to a few pieces
WORDS = ["face", "smile", "grin", "cat", "dog", "monkey", "fruit", "grape", "melon", "hand",
         "wave", "car", "bus", "train", "ball", "game", "uso", "tabasamu", "paka", "mbwa",
         "tumbili", "tunda", "zabibu", "tikiti", "mkono", "punga", "gari", "basi", "mpira",
         "mchezo", "|", ",", ":"]


def make_tiny_bert(path: Path, seed: int = 0, hidden: int = 32, layers: int = 2,
                   heads: int = 2, extra_words: Sequence[str] = ()) -> Path:
    """Write config.json, model.safetensors, vocab.txt and tokenizer files into `path`."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    tokens = list(dict.fromkeys(SPECIAL + LETTERS + ["##" + c for c in LETTERS] + WORDS
                                + list(extra_words)))
    # transformers 5 builds the WordPiece tokenizer from a vocab dict (vocab_file is ignored)
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)},
                                  do_lower_case=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(tokenizer.get_vocab()), hidden_size=hidden,
                        num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=hidden * 2, max_position_embeddings=64)
    model = BertModel(config)
    model.save_pretrained(str(path), safe_serialization=True)
    tokenizer.save_pretrained(str(path))
    # vocab.txt too, as BERT checkpoints ship it (tokenizer.json is what gets loaded)
    (path / "vocab.txt").write_text("\n".join(tokens) + "\n")
    return path
