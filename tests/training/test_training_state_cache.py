"""The base's state cache (teacher embeddings and frozen-prefix states kept on disk per base
fingerprint and token ids), on the tiny random BERT: what it returns equals what the base
computes, a second cache object (a later run) reads it from disk without recomputing, ids
that differ are not confused, and distillation through it trains the same student. The
in-process memo (serving, gates) returns the same, computes each text once, and stays under
its byte bound, dropping the least recently used rows first."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from controller.encoders.text import TextEncoder
from controller.training import head_cache
from controller.training.distill import DistillConfig, ParallelData, distill
from controller.training.embed import embed_sorted, tokenize_ids
from controller.training.split import prefix_states
from controller.training.state_cache import BaseStateCache, MemoryStateCache
from tests.support.tinymodel import make_tiny_bert
from tests.training.test_training import ITEMS, LABELS

SPLIT = DistillConfig(r=4, alpha=8, epochs=3, batch_size=4, lr=1e-2, warmup_steps=2,
                      max_length=16, seed=3, frozen_layers=1)


@pytest.fixture(scope="module")
def encoder(tmp_path_factory: pytest.TempPathFactory) -> TextEncoder:
    return TextEncoder(make_tiny_bert(tmp_path_factory.mktemp("tiny-cache"), layers=3),
                       device="cpu", max_length=16)


def test_cached_embeddings_equal_the_base_and_persist(tmp_path: Path,
                                                      encoder: TextEncoder) -> None:
    texts = [en for en, _, _ in ITEMS]
    cache = BaseStateCache("fp-a", root=tmp_path)
    first = cache.embeddings(encoder, texts)
    assert torch.allclose(first, embed_sorted(encoder, texts), atol=1e-5)
    store = next((tmp_path / "fp-a").glob("pooled.safetensors"))
    stamp = store.stat().st_mtime_ns
    # a later run: a fresh object reads the file; nothing new is computed or written
    again = BaseStateCache("fp-a", root=tmp_path).embeddings(encoder, list(reversed(texts)))
    assert torch.equal(again, first.flip(0))
    assert store.stat().st_mtime_ns == stamp
    # new texts are added, old ones kept; another base has its own directory
    more = cache.embeddings(encoder, ["zebra grape", texts[0]])
    assert torch.allclose(more[1], first[0]) and not torch.allclose(more[0], first[0])
    assert not (tmp_path / "fp-b").exists()


def test_cached_prefix_states_equal_the_base(tmp_path: Path, encoder: TextEncoder) -> None:
    ids = tokenize_ids(encoder, [t for _, t, _ in ITEMS], 16)
    pad = encoder.tokenizer.pad_token_id or 0
    cache = BaseStateCache("fp-a", root=tmp_path)
    ours = cache.prefix_states(encoder.model, ids, 2, pad, encoder.device)
    fresh = prefix_states(encoder.model, ids, 2, pad, encoder.device)
    for a, b, x in zip(ours, fresh, ids, strict=True):
        assert a.shape == (len(x), encoder.hidden_size)
        assert torch.allclose(a, b, atol=1e-5)
    # each cut is its own store: cut 1 is not served from cut 2's states
    one = BaseStateCache("fp-a", root=tmp_path).prefix_states(encoder.model, ids, 1, pad,
                                                                encoder.device)
    assert not torch.allclose(one[0], ours[0])


def test_distill_through_the_cache_trains_the_same_student(tmp_path: Path,
                                                            encoder: TextEncoder) -> None:
    emb = embed_sorted(encoder, [en for en, _, _ in ITEMS]).numpy()
    head = head_cache.train_head(emb, [y for _, _, y in ITEMS], len(LABELS), steps=100)
    data = ParallelData([t for _, t, _ in ITEMS], [en for en, _, _ in ITEMS])
    plain = distill(encoder, head, data, SPLIT, progress=False)
    cache = BaseStateCache("fp-a", root=tmp_path)
    cold = distill(encoder, head, data, SPLIT, progress=False, cache=cache)
    warm = distill(encoder, head, data, SPLIT, progress=False, cache=cache)
    for run in (cold, warm):
        for a, b in zip(plain.history, run.history, strict=True):
            assert a["loss"] == pytest.approx(b["loss"], rel=1e-3, abs=1e-6)
    texts = [t for _, t, _ in ITEMS]
    assert torch.allclose(embed_sorted(encoder, texts, model=plain.model),
                          embed_sorted(encoder, texts, model=warm.model), atol=1e-4)


def test_evaluation_through_cached_prefix_states_matches_the_full_forward(
        tmp_path: Path, encoder: TextEncoder) -> None:
    import pandas as pd

    from controller.training.evaluate import evaluate_split

    emb = embed_sorted(encoder, [en for en, _, _ in ITEMS]).numpy()
    head = head_cache.train_head(emb, [y for _, _, y in ITEMS], len(LABELS), steps=100)
    data = ParallelData([t for _, t, _ in ITEMS], [en for en, _, _ in ITEMS])
    student = distill(encoder, head, data, SPLIT, progress=False).model
    df = pd.DataFrame([{"language": lang, "id": f"{lang}:{i}", "text": text,
                        "label": LABELS[y]}
                       for i, (en, sw, y) in enumerate(ITEMS)
                       for lang, text in (("en", en), ("sw", sw))])
    plain = evaluate_split(encoder, student, head, df, "sw", LABELS)
    memo = MemoryStateCache()
    for cache in (BaseStateCache("fp-a", root=tmp_path), BaseStateCache("fp-a", root=tmp_path),
                  memo, memo):  # cold, then from the stored states; on disk, then in memory
        cached = evaluate_split(encoder, student, head, df, "sw", LABELS, cache=cache)
        assert cached["correct"] == plain["correct"]
        assert cached["items"]["confidence"] == pytest.approx(plain["items"]["confidence"],
                                                              abs=1e-4)
        assert cached["source_accuracy_student"] == plain["source_accuracy_student"]
    assert (tmp_path / "fp-a" / "prefix1.safetensors").is_file()


def test_memory_cache_computes_each_text_once_and_stays_under_its_bound(
        encoder: TextEncoder) -> None:
    texts = [t for _, t, _ in ITEMS]
    ids = tokenize_ids(encoder, texts, 16)
    pad = encoder.tokenizer.pad_token_id or 0
    computed: list[int] = []

    def count(todo: list) -> list[torch.Tensor]:
        computed.append(len(todo))
        return prefix_states(encoder.model, todo, 2, pad, encoder.device)

    memo = MemoryStateCache()
    first = memo._get_many("prefix2", ids, count)
    again = memo._get_many("prefix2", [*reversed(ids), ids[0]], count)
    assert computed == [len({tuple(x) for x in ids})]  # the second call computed nothing
    for a, b in zip(reversed(first), again, strict=False):
        assert torch.equal(a, b)
    assert torch.allclose(memo.embeddings(encoder, texts), embed_sorted(encoder, texts),
                          atol=1e-5)

    row = first[0].nelement() * 4
    small = MemoryStateCache(max_bytes=3 * row)
    small._get_many("prefix2", [ids[0]], count)
    small._get_many("prefix2", [ids[1]], count)
    small._get_many("prefix2", [ids[0]], count)  # ids[0] is now the most recently used
    small._get_many("prefix2", ids[2:5], count)
    assert small.nbytes <= small.max_bytes
    computed.clear()
    small._get_many("prefix2", [ids[1]], count)  # the least recently used went first
    assert computed == [1]


def test_memory_cache_rows_do_not_keep_their_batch_alive() -> None:
    """Rows computed as slices of one padded batch: the memo keeps each row's own bytes
    (what it counts against its bound), not a view of the whole batch."""
    batch = torch.randn(8, 40, 16)

    def sliced(todo: list) -> list[torch.Tensor]:
        return [batch[i, :len(x)] for i, x in enumerate(todo)]

    memo = MemoryStateCache()
    rows = memo._get_many("prefix2", [[1, 2], [3, 4, 5]], sliced)
    stored = list(memo._rows.values())
    assert [tuple(r.shape) for r in rows] == [(2, 16), (3, 16)]
    for r in stored:
        assert r.untyped_storage().nbytes() == r.nelement() * r.element_size()
    assert torch.equal(stored[1], batch[1, :3])
    assert memo.nbytes == 5 * 16 * 4
