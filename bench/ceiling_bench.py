"""What the shipped data allows per language: held-out accuracy of simple models that read
only the language's own text, beside the shipped recipe's student, on the same test split.

Issue 9 asks for hi, sw, yo >= 0.75 and am >= 0.70 on held-out test items. Five sessions
of recipe search (README "Known limits") left sw near 0.69 and yo near 0.73. This bench
asks whether that is the recipe or the data: if models that see the language's labels in
a different way land at the same place, and even their best combination stays short, the
test split's items do not carry more of the group in that language's text.

Per language, on the shipped split (`train` to fit, `dev` to fit stacking weights,
`test` to report):

- `english_head`: the teacher's English head on the frozen base (zero-shot);
- `frozen_head`: a linear head on the frozen base's embeddings, fitted on English and the
  language's own training labels;
- `lexical`: TF-IDF of character 2-5-grams and word 1-2-grams with multinomial logistic
  regression (C=10, fixed before any test figure was read) on the language's own training
  labels: no encoder (the shipped lexical half, controller.training.lexical, is the same
  model with C chosen on dev);
- `lexical+dev`: the same model fitted on train + dev (the shipped recipe refits its
  lexical half so, once dev has chosen the stacking weights);
- `frozen+lexical`: the two stacked: logits a * frozen + b * lexical, a and b fitted on
  the dev split by log-loss;
- with `--student` (default on): `student`, the shipped recipe (distill.for_base: the
  top six blocks, three epochs, distillation plus target labels) as bench/train_bench.py
  trains it, and `student+lexical` stacked the same way; `student+lexical+dev`: the
  weights fitted with the train-only half on dev, applied to the refit half (what an
  adapter ships);
- `either_right`: the share of test items that the frozen head or the lexical model gets
  right (an oracle, not a model: how complementary they are).

English through the English head on English test items is the teacher's own ceiling.
Then `--resplits` re-splits of the emoji (the dataset's own stratified 70/15/15 split
with other seeds) repeat the encoder-free and frozen rows, so the shipped split's figure
can be read against the spread of split luck (450 test rows of ~225 emoji per language).

Prints a table, and as its LAST line one JSON object of figures.

    python bench/ceiling_bench.py                          # me5-small@1: hi, sw, yo, am
    python bench/ceiling_bench.py --langs sw --no-student --resplits 10
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from controller.data import cldr  # noqa: E402
from controller.encoders.builtin import builtin_dir_for_ref  # noqa: E402
from controller.encoders.text import TextEncoder  # noqa: E402
from controller.training.distill import ParallelData, distill, for_base  # noqa: E402
from controller.training.evaluate import embed_texts  # noqa: E402
from controller.training.head import LinearHead, train_head  # noqa: E402
from controller.training.state_cache import BaseStateCache  # noqa: E402
from registry.fingerprint import loaded_model_fingerprint  # noqa: E402

LANGS = ("hi", "sw", "yo", "am")
INDEX = {name: i for i, name in enumerate(cldr.LABELS)}
# stacking weights: a log-spaced grid, fitted on dev by log-loss (the same dev split that
# calibrates the shipped adapters' temperature)
GRID = np.exp(np.linspace(np.log(0.05), np.log(8.0), 25))


def labels_of(rows: pd.DataFrame) -> np.ndarray:
    return np.array([INDEX[v] for v in rows["label"]])


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    return z - np.log(np.exp(z).sum(1, keepdims=True))


def stack(dev: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
          y_dev: np.ndarray) -> np.ndarray:
    """Test logits a * first + b * second, (a, b) minimising dev log-loss."""
    rows = np.arange(len(y_dev))
    best = min(((a, b) for a in GRID for b in GRID),
               key=lambda ab: -log_softmax(ab[0] * dev[0] + ab[1] * dev[1])[rows, y_dev].mean())
    return best[0] * test[0] + best[1] * test[1]


class Lexical:
    """TF-IDF character and word n-grams with multinomial logistic regression."""

    def __init__(self, texts: list[str], y: np.ndarray) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_union

        self.vec = make_union(
            TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 5), sublinear_tf=True),
            TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True))
        self.model = LogisticRegression(C=10.0, max_iter=3000).fit(
            self.vec.fit_transform(texts), y)

    def logits(self, texts: list[str]) -> np.ndarray:
        return np.asarray(self.model.decision_function(self.vec.transform(texts)))


class Frozen:
    """The frozen base's pooled embeddings, read through the base's state cache."""

    def __init__(self, encoder: TextEncoder, cache: BaseStateCache) -> None:
        self.encoder, self.cache = encoder, cache

    def __call__(self, texts: list[str]) -> np.ndarray:
        return embed_texts(self.encoder, None, texts, self.cache).numpy()


def head_logits(head: LinearHead, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return head(torch.as_tensor(x, dtype=torch.float32)).numpy()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return round(float((logits.argmax(1) == y).mean()), 4)


def split_figures(frozen: Frozen, parts: dict[str, pd.DataFrame], language: str,
                  seed: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Encoder-free and frozen-base figures on one split; also returns the logits the
    student rows stack with."""
    train, dev, test = (parts[s] for s in cldr.SPLITS)
    en_train = train[train["language"] == "en"]
    mine = {s: parts[s][parts[s]["language"] == language] for s in cldr.SPLITS}
    y_dev, y_test = labels_of(mine["dev"]), labels_of(mine["test"])
    english = train_head(frozen(en_train["text"].tolist()), labels_of(en_train),
                         len(cldr.LABELS), seed=seed)
    both = pd.concat([en_train, mine["train"]])
    head = train_head(frozen(both["text"].tolist()), labels_of(both), len(cldr.LABELS),
                      steps=1000, seed=seed)
    lexical = Lexical(mine["train"]["text"].tolist(), labels_of(mine["train"]))
    # the shipped recipe's refit: once dev has weighed the halves, the half is fitted
    # again on train + dev (controller.training.calibrate.shipped_head)
    both_rows = pd.concat([mine["train"], mine["dev"]])
    refit = Lexical(both_rows["text"].tolist(), labels_of(both_rows))
    x_dev, x_test = frozen(mine["dev"]["text"].tolist()), frozen(mine["test"]["text"].tolist())
    f_dev, f_test = head_logits(head, x_dev), head_logits(head, x_test)
    l_dev = lexical.logits(mine["dev"]["text"].tolist())
    l_test = lexical.logits(mine["test"]["text"].tolist())
    r_test = refit.logits(mine["test"]["text"].tolist())
    en_test = test[test["language"] == "en"]
    figures = {
        "english_head": accuracy(head_logits(english, x_test), y_test),
        "frozen_head": accuracy(f_test, y_test),
        "lexical": accuracy(l_test, y_test),
        "lexical+dev": accuracy(r_test, y_test),
        "frozen+lexical": accuracy(stack((f_dev, l_dev), (f_test, l_test), y_dev), y_test),
        "either_right": round(float(((f_test.argmax(1) == y_test)
                                     | (l_test.argmax(1) == y_test)).mean()), 4),
        "english_on_english": accuracy(
            head_logits(english, frozen(en_test["text"].tolist())), labels_of(en_test)),
    }
    return figures, {"l_dev": l_dev, "l_test": l_test, "r_test": r_test, "y_dev": y_dev,
                     "y_test": y_test}


def student_figures(encoder: TextEncoder, cache: BaseStateCache, parts: dict[str, pd.DataFrame],
                    language: str, seed: int, lexical: dict[str, np.ndarray]
                    ) -> dict[str, float]:
    """The shipped recipe's student on the shipped split (as bench/train_bench.py trains
    it, with the English head of the same split), alone and stacked with `lexical`."""
    train = parts["train"]
    en_train = train[train["language"] == "en"]
    teacher = train_head(embed_texts(encoder, None, en_train["text"].tolist(), cache).numpy(),
                         labels_of(en_train), len(cldr.LABELS), seed=seed)
    pairs = cldr.parallel_pairs(train, "en", language)
    cfg = for_base(encoder.model.config, seed=seed)
    data = ParallelData(pairs["text_target"].tolist(), pairs["text_source"].tolist(),
                        labels_of(pairs).tolist() if cfg.ce_weight else None)
    t0 = time.perf_counter()
    student = distill(encoder, teacher, data, cfg, progress=False, cache=cache).model
    seconds = time.perf_counter() - t0

    def logits(split: str) -> np.ndarray:
        rows = parts[split][parts[split]["language"] == language]
        return head_logits(teacher, embed_texts(encoder, student, rows["text"].tolist(),
                                                cache).numpy())

    s_dev, s_test = logits("dev"), logits("test")
    y_test = lexical["y_test"]
    return {"student": accuracy(s_test, y_test),
            "student+lexical": accuracy(stack((s_dev, lexical["l_dev"]),
                                              (s_test, lexical["l_test"]),
                                              lexical["y_dev"]), y_test),
            # the weights chosen with the train-only half, applied to the refit one
            "student+lexical+dev": accuracy(stack((s_dev, lexical["l_dev"]),
                                                  (s_test, lexical["r_test"]),
                                                  lexical["y_dev"]), y_test),
            "student_train_seconds": round(seconds, 1)}


def resplit(every: pd.DataFrame, seed: int) -> dict[str, pd.DataFrame]:
    """The dataset's own stratified 70/15/15 emoji split, with another seed."""
    groups = dict(zip(every["emoji"], every["label"], strict=False))
    assignment = cldr.split_emoji(groups, seed)
    split = every["emoji"].map(assignment)
    return {s: every[split == s].reset_index(drop=True) for s in cldr.SPLITS}


COLS = ("english_head", "frozen_head", "lexical", "lexical+dev", "frozen+lexical",
        "either_right", "student", "student+lexical", "student+lexical+dev")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", default="me5-small@1", help="builtin base: me5-small@1, minilm@1")
    ap.add_argument("--langs", default=",".join(LANGS), help="comma-separated languages")
    ap.add_argument("--resplits", type=int, default=5,
                    help="re-splits of the emoji for the spread of split luck (0: none)")
    ap.add_argument("--student", action=argparse.BooleanOptionalAction, default=True,
                    help="train the shipped recipe's student on the shipped split")
    ap.add_argument("--student-resplits", type=int, default=0,
                    help="also train the student on the first N re-splits (about a minute "
                         "each per language)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.resplits < 0 or not 0 <= args.student_resplits <= args.resplits:
        ap.error("--resplits must be >= 0 and --student-resplits between 0 and --resplits")
    model_dir = builtin_dir_for_ref(args.base)
    if model_dir is None:
        ap.error(f"--base {args.base!r} is not a builtin base (minilm@1, me5-small@1)")
    langs = [x for x in args.langs.split(",") if x]
    every = pd.concat([cldr.load_split(s) for s in cldr.SPLITS]).reset_index(drop=True)
    unknown = sorted(set(langs) - set(every["language"]) | ({"en"} & set(langs)))
    if unknown or not langs:
        ap.error(f"--langs: no target language {unknown or ''} in the shipped dataset "
                 f"(it has {', '.join(sorted(set(every['language']) - {'en'}))})")
    torch.set_num_threads(2)
    started = time.perf_counter()
    encoder = TextEncoder(model_dir, device="cpu", max_length=48)
    cache = BaseStateCache(loaded_model_fingerprint(encoder.model, encoder.tokenizer))
    frozen = Frozen(encoder, cache)
    every = every[every["language"].isin(["en", *langs])]
    shipped = {s: every[every["split"] == s].reset_index(drop=True) for s in cldr.SPLITS}
    results: dict[str, Any] = {}
    for language in langs:
        figures, lexical = split_figures(frozen, shipped, language, args.seed)
        if args.student:
            figures.update(student_figures(encoder, cache, shipped, language, args.seed,
                                           lexical))
        spread = []
        for k in range(1, args.resplits + 1):
            parts = resplit(every, args.seed + k)
            row, lexical = split_figures(frozen, parts, language, args.seed)
            if k <= args.student_resplits:
                row.update(student_figures(encoder, cache, parts, language, args.seed,
                                           lexical))
            spread.append(row)
        results[language] = {"shipped": figures, "resplits": {
            c: {"mean": round(float(np.mean([f[c] for f in spread if c in f])), 4),
                "sd": round(float(np.std([f[c] for f in spread if c in f], ddof=1)), 4),
                "n": sum(c in f for f in spread)}
            for c in spread[0] if sum(c in f for f in spread) > 1} if spread else {}}
        print(f"{language}: " + " ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    print(f"\nheld-out test accuracy on {args.base}, shipped split (the lexical model reads "
          f"only the language's own text; stacks fitted on dev)")
    print(f"{'language':>8} | " + " | ".join(f"{c:>15}" for c in COLS))
    for language, r in results.items():
        print(f"{language:>8} | " + " | ".join(f"{r['shipped'].get(c, '-')!s:>15}"
                                               for c in COLS))
    if args.resplits > 1:
        print(f"\nthe same on {args.resplits} re-splits of the emoji (mean +- sd; the "
              f"student on the first {args.student_resplits}): the spread of split luck")
        for language, r in results.items():
            print(f"{language:>8} | " + " | ".join(
                f"{r['resplits'][c]['mean']:.3f}+-{r['resplits'][c]['sd']:.3f}".rjust(15)
                if c in r["resplits"] else f"{'-':>15}" for c in COLS))
    english = {lang: r["shipped"]["english_on_english"] for lang, r in results.items()}
    print(f"\nEnglish head on English test items (the teacher's ceiling): "
          f"{next(iter(english.values()))}")
    print(json.dumps({"base": args.base, "languages": langs, "resplits": args.resplits,
                      "accuracy": {lang: r["shipped"] for lang, r in results.items()},
                      "resplit_accuracy": {lang: r["resplits"] for lang, r in results.items()},
                      "seconds": round(time.perf_counter() - started, 1)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
