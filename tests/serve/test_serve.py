"""`xlt serve` as a user runs it: a real process on a loopback port, mixed-language batches,
a promotion and a rollback made by another process picked up without restart, the traffic
log, feedback, and bad requests answered 4xx with a reason."""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import select

from controller.encoders.text import TextEncoder
from controller.serve.lora import MultiAdapterBase
from controller.training.artifact import load_adapter
from registry.errors import IncompatibleAdapter
from registry.fingerprint import loaded_model_fingerprint
from registry.schema import InferenceEvent
from registry.service import Registry
from registry.settings import load_settings
from tests.support.mlflow_support import free_port
from tests.support.serve_support import LABELS, TASK, make_lora_file, register_lora

TEXTS = {"sw": "uso tabasamu", "yo": "paka mbwa", "hi": "gari basi", "sw-KE": "mpira"}
CLIENT = "client-token-0123456789abcdef"  # predict, feedback
OTHER = "other-client-0123456789abcdef"  # predict, feedback: another client
PREDICTOR = "predict-only-0123456789abcdef"  # predict
ADMIN = "admin-token-0123456789abcdef"  # admin
TOKENS = (f"{CLIENT} predict,feedback\n{OTHER} predict,feedback\n{PREDICTOR} predict\n"
          f"{ADMIN} admin\n")


def test_mixed_batch_is_one_forward_pass_with_each_rows_adapter(tmp_path: Path,
                                                                tiny_model_dir: Path,
                                                                tiny_model_dir_v2: Path
                                                                ) -> None:
    enc = TextEncoder(tiny_model_dir, device="cpu")
    fp = loaded_model_fingerprint(enc.model, enc.tokenizer)
    files = [make_lora_file(tmp_path / f"a{i}.safetensors", tiny_model_dir, fp, seed=i,
                            r=2 + 2 * i, targets=("query", "value") if i % 2 else
                            ("query", "key", "dense")) for i in range(3)]
    multi = MultiAdapterBase("tiny@1", TextEncoder(tiny_model_dir, device="cpu"))
    for i, f in enumerate(files):
        multi.load(i, f)
    calls = []
    multi.encoder.model.embeddings.register_forward_hook(lambda *a: calls.append(1))
    texts = ["uso tabasamu", "gari", "paka mbwa tumbili", "face smile", "ball game", "fruit"]
    keys = [0, 1, 2, 1, 0, 2]
    labels, probs, names, base_emb = multi.classify(texts, keys, with_base=True)
    assert len(calls) == 1  # six rows, three adapters, plus the bare base rows: one pass
    for i, (text, k) in enumerate(zip(texts, keys, strict=True)):
        peft = load_adapter(files[k], enc.model, enc.tokenizer)  # the reference: PEFT
        want = peft.head.predict_proba(enc.embed([text], model=peft.model))[0]
        np.testing.assert_allclose(probs[i], want, atol=1e-5)
        assert labels[i] == LABELS[int(want.argmax())] and names[i] == tuple(LABELS)
    np.testing.assert_allclose(base_emb, enc.embed(texts), atol=1e-5)
    # the contract's check at load: an adapter of another base is refused
    other = TextEncoder(tiny_model_dir_v2, device="cpu")
    other_fp = loaded_model_fingerprint(other.model, other.tokenizer)
    foreign = make_lora_file(tmp_path / "foreign.safetensors", tiny_model_dir_v2, other_fp, 9)
    with pytest.raises(IncompatibleAdapter, match="fingerprint"):
        multi.load("foreign", foreign)
    assert torch.equal(multi.layers[next(iter(multi.layers))].A[0],
                       torch.zeros_like(multi.layers[next(iter(multi.layers))].A[0]))


def call(url: str, body: Any = None, raw: bytes | None = None,
         token: str | None = CLIENT) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                        else None)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def xlt(home: Path, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XLT_HOME": str(home), "XLT_DATABASE_URL": db, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "controller.cli", "--actor", "ops", *args],
                          env=env, capture_output=True, text=True, timeout=120)


def start_registry(tmp_path: Path, db_url: str, tiny_model_dir: Path) -> Registry:
    home = tmp_path / "home"
    reg = Registry(load_settings(home=home, database_url=db_url), "tester")
    reg.init()
    reg.register_encoder("tiny", "1", tiny_model_dir)
    for seed, lang in enumerate(["sw", "yo", "hi"], start=1):
        register_lora(reg, tiny_model_dir, tmp_path, lang, seed)
        reg.promote(TASK, lang, 1)
    register_lora(reg, tiny_model_dir, tmp_path, "sw", 10)  # sw v2, a candidate
    return reg


@contextlib.contextmanager
def serving(tmp_path: Path, reg: Registry, policy_text: str,
            tokens: str | None = TOKENS, args: tuple[str, ...] = ()) -> Iterator[str]:
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text)
    port = free_port()
    env = {**os.environ, "XLT_HOME": str(reg.settings.home),
           "XLT_DATABASE_URL": reg.settings.database_url}
    env.pop("XLT_SERVE_TOKENS", None)
    if tokens is not None:
        env["XLT_SERVE_TOKENS"] = tokens
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - kept by the child
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "serve", "--host",
                             "127.0.0.1", "--port", str(port), "--policy", str(policy),
                             *args],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            with contextlib.suppress(OSError):
                code, body = call(f"{url}/readyz")
                if code == 200 or "starting" not in body.get("error", "starting"):
                    break  # up: ready, or not ready for a reason of its own
            time.sleep(0.2)
        else:
            pytest.fail("xlt serve was not ready in 120 s")
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()
        assert CLIENT not in (tmp_path / "serve.log").read_text()  # tokens never logged


@pytest.fixture
def served(tmp_path: Path, db_url: str, tiny_model_dir: Path) -> Iterator[tuple[str, Registry]]:
    """`xlt serve` with tokens, revealing the arm (the promotion test reads `version`)."""
    reg = start_registry(tmp_path, db_url, tiny_model_dir)
    with serving(tmp_path, reg, 'no_text_languages = ["yo"]\n[serve]\nreveal_arm = true\n'
                 ) as url:
        assert call(f"{url}/readyz")[0] == 200
        yield url, reg


def row_id(receipt: str) -> int:
    return int(receipt.split(".")[0])


def predict(url: str, languages: list[str], keys: list[str] | None = None
            ) -> tuple[int, dict[str, Any]]:
    texts = [TEXTS[lang] for lang in languages]
    return call(f"{url}/v1/predict", {"task": TASK, "texts": texts, "languages": languages,
                                      "routing_keys": keys or [f"user-{i}" for i in
                                                               range(len(texts))]})


def test_serve_mixed_languages_follow_promotion_and_log_traffic(served) -> None:
    url, reg = served
    code, body = predict(url, ["sw", "yo", "hi", "sw-KE", "sw"])
    assert code == 200, body
    rows = body["predictions"]
    assert [r["served_language"] for r in rows] == ["sw", "yo", "hi", "sw", "sw"]  # fallback
    assert all(r["version"] == 1 and r["role"] == "champion" and r["base"] == "tiny@1"
               for r in rows)
    assert all(r["label"] in LABELS and abs(sum(r["probabilities"].values()) - 1) < 1e-4
               for r in rows)
    # the same text in the same language gives the same answer whatever the batch holds
    alone = predict(url, ["sw"])[1]["predictions"][0]
    assert alone["label"] == rows[0]["label"]
    np.testing.assert_allclose(alone["confidence"], rows[0]["confidence"], atol=1e-5)

    promoted = xlt(Path(reg.settings.home), reg.settings.database_url, "promote", "--task",
                   TASK, "--lang", "sw", "--version", "2")
    assert promoted.returncode == 0, promoted.stderr
    seen_at = time.monotonic()
    while True:
        rows = predict(url, ["sw", "yo"])[1]["predictions"]
        if rows[0]["version"] == 2:
            break
        assert time.monotonic() - seen_at < 1.0, "xlt serve still serves sw v1 after 1 s"
    assert rows[1]["version"] == 1  # yo untouched
    rolled = xlt(Path(reg.settings.home), reg.settings.database_url, "rollback", "--task",
                 TASK, "--lang", "sw")
    assert rolled.returncode == 0, rolled.stderr
    assert predict(url, ["sw"])[1]["predictions"][0]["version"] == 1  # next batch sees it

    with reg.reading() as s:
        events = list(s.scalars(select(InferenceEvent).order_by(InferenceEvent.id)))
    assert len(events) >= 5 + 1 + 2 + 1  # mixed, alone, the polls after promote, rollback
    first = events[:5]
    assert [(e.language, e.adapter_version) for e in first] == [
        ("sw", 1), ("yo", 1), ("hi", 1), ("sw-KE", 1), ("sw", 1)]
    assert first[0].text == TEXTS["sw"] and first[1].text is None  # yo: no_text_languages
    assert all(e.embedding and len(e.embedding) == 32 * 4 for e in first)
    assert first[1].descriptors  # drift still has descriptors for yo
    assert {e.adapter_version for e in events if e.language == "sw"} == {1, 2}
    assert events[-1].adapter_version == 1 and events[-1].routing_key == "user-0"

    # feedback for an earlier prediction lands on its row
    pid = body["predictions"][0]["prediction_id"]
    code, fb = call(f"{url}/v1/feedback", {"task": TASK, "feedback": [
        {"prediction_id": pid, "label": "Animals & Nature"}]})
    assert (code, fb["recorded"]) == (200, 1)
    with reg.reading() as s:
        assert s.get(InferenceEvent, row_id(pid)).feedback_label == "Animals & Nature"


BAD = [
    ({"task": TASK, "texts": ["x"], "routing_key": "k"}, 422, "exactly one of `language`"),
    ({"task": TASK, "texts": [], "language": "sw", "routing_key": "k"}, 422, "texts"),
    ({"task": TASK, "texts": ["x", "y"], "languages": ["sw"], "routing_key": "k"}, 422,
     "1 entries for 2 texts"),
    ({"task": TASK, "texts": ["x"], "language": "not a tag!", "routing_key": "k"}, 400,
     "not a tag!"),
    ({"task": TASK, "texts": ["x"], "language": "de", "routing_key": "k"}, 404,
     "no adapter serves emoji-group/de"),
    ({"task": "nope", "texts": ["x"], "language": "sw", "routing_key": "k"}, 404,
     "no adapter serves nope/sw"),
    ({"task": TASK, "texts": ["x"], "language": "sw", "routing_key": "k", "x": 1}, 422,
     "x"),
]


def test_bad_requests_get_4xx_with_a_reason(served) -> None:
    url, _ = served
    for body, status, needle in BAD:
        code, answer = call(f"{url}/v1/predict", body)
        assert code == status, (body, answer)
        assert needle in answer["error"], (body, answer)
    code, answer = call(f"{url}/v1/predict", raw=b"{not json")
    assert code == 422 and answer["error"]
    code, answer = call(f"{url}/v1/feedback", {"task": TASK, "feedback": [
        {"prediction_id": "999999.forged", "label": "Animals & Nature"}]})
    assert code == 403 and "not one this token was given" in answer["error"]
    code, answer = call(f"{url}/healthz", token=None)
    assert (code, answer["status"]) == (200, "ok")
    # over the [serve] limits: 413 naming the limit
    code, answer = call(f"{url}/v1/predict", {"task": TASK, "texts": ["x"] * 257,
                                              "language": "sw", "routing_key": "k"})
    assert code == 413 and "limit is 256" in answer["error"]
    code, answer = call(f"{url}/v1/predict", {"task": TASK, "texts": ["x" * 2001],
                                              "language": "sw", "routing_key": "k"})
    assert code == 413 and "limit is 2000" in answer["error"]
    code, answer = call(f"{url}/v1/feedback", {"task": TASK, "feedback": [
        {"prediction_id": f"{i}.x", "label": "Animals & Nature"} for i in range(1, 258)]})
    assert code == 413 and "limit is 256" in answer["error"]
    # a long request is served in chunks of --max-batch (64), in order
    code, answer = call(f"{url}/v1/predict", {"task": TASK, "texts": ["paka"] * 150,
                                              "language": "sw", "routing_key": "k"})
    assert code == 200 and len(answer["predictions"]) == 150
    assert len({p["prediction_id"] for p in answer["predictions"]}) == 150


def labels_now(reg: Registry) -> list[tuple[int, str | None]]:
    with reg.reading() as s:
        return list(s.execute(select(InferenceEvent.id, InferenceEvent.feedback_label)
                              .order_by(InferenceEvent.id)).all())


def test_only_a_caller_given_a_prediction_labels_it_once(served) -> None:
    """The attack of issue 29: wrong labels on guessed ids while a canary runs."""
    url, reg = served
    reg.start_canary(TASK, "sw", 2, 0.5)
    code, body = call(f"{url}/v1/predict", {"task": TASK, "texts": ["paka"] * 40,
                                            "language": "sw",
                                            "routing_keys": [f"u{i}" for i in range(40)]})
    assert code == 200
    receipts = [p["prediction_id"] for p in body["predictions"]]
    before = labels_now(reg)
    assert {lbl for _, lbl in before} == {None}
    ids = [i for i, _ in before]
    guesses = ([{"prediction_id": str(i), "label": "Symbols"} for i in ids]
               + [{"prediction_id": f"{i}.AAAAAAAAAAAAAAAAAAAAAAAA", "label": "Symbols"}
                  for i in ids])
    for token in (None, "not-a-token-0123456789", PREDICTOR, ADMIN, OTHER, CLIENT):
        for chunk in (guesses[:50], guesses[50:]):
            code, answer = call(f"{url}/v1/feedback", {"task": TASK, "feedback": chunk},
                                token=token)
            assert code in (401, 403), (token, code, answer)
            assert set(answer) == {"error", "hint"} and "\n" not in answer["error"]
    # another client's own receipts are refused too; predicting needs a token
    code, answer = call(f"{url}/v1/feedback", {"task": TASK, "feedback": [
        {"prediction_id": receipts[0], "label": "Symbols"}]}, token=OTHER)
    assert code == 403
    assert call(f"{url}/v1/predict", {"task": TASK, "texts": ["x"], "language": "sw",
                                      "routing_key": "k"}, token=None)[0] == 401
    assert call(f"{url}/v1/models", token=CLIENT)[0] == 403
    assert call(f"{url}/v1/models", token=ADMIN)[0] == 200
    assert labels_now(reg) == before  # the canary's evidence is unchanged

    # the caller's own receipts: once each
    one = {"prediction_id": receipts[0], "label": "Animals & Nature"}
    assert call(f"{url}/v1/feedback", {"task": TASK, "feedback": [one, one]})[0] == 409
    assert call(f"{url}/v1/feedback", {"task": TASK, "feedback": [one]})[0] == 200
    code, answer = call(f"{url}/v1/feedback", {"task": TASK, "feedback": [
        {"prediction_id": receipts[0], "label": "Symbols"}]})
    assert code == 409 and "already have a label" in answer["error"]
    code, answer = call(f"{url}/v1/feedback", {"task": TASK, "feedback": [
        {"prediction_id": receipts[1], "label": "Food & Drink"},
        {"prediction_id": receipts[0], "label": "Symbols"}]})
    assert code == 409  # all or nothing: receipts[1] is not labelled either
    after = dict(labels_now(reg))
    assert after[row_id(receipts[0])] == "Animals & Nature" and after[row_id(receipts[1])] is None
    # a receipt is for its task
    code, _ = call(f"{url}/v1/feedback", {"task": "other-task", "feedback": [
        {"prediction_id": receipts[2], "label": "Food & Drink"}]})
    assert code == 403


def test_a_poison_pill_fails_alone(served) -> None:
    url, reg = served
    good = {"task": TASK, "texts": ["paka mbwa", "gari"], "languages": ["sw", "hi"],
            "routing_key": "k"}
    pills = [{**good, "texts": ["paka \ud800", "gari"]},  # lone surrogate (SQLite)
             {**good, "texts": ["paka\x00", "gari"]},  # NUL (PostgreSQL)
             {**good, "texts": ["paka", "gari\x07"]},  # another control character
             {**good, "routing_key": "k\x00"},
             {**good, "languages": ["sw\udfff", "hi"]}]
    bodies = [good] * 30 + pills * 2
    import random
    random.Random(7).shuffle(bodies)
    with cf.ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda b: call(f"{url}/v1/predict", b), bodies))
    for body, (code, answer) in zip(bodies, answers, strict=True):
        if body is good:
            assert code == 200 and len(answer["predictions"]) == 2, answer
        else:
            assert code == 422 and answer["error"], (body, answer)
            assert "surrogate" in answer["error"] or "control character" in answer["error"]
    # NFC: a decomposed text is served and logged composed
    code, answer = call(f"{url}/v1/predict", {**good, "texts": ["cafe\u0301", "gari"]})
    assert code == 200
    with reg.reading() as s:
        assert s.get(InferenceEvent, row_id(answer["predictions"][0]["prediction_id"])
                     ).text == "caf\u00e9"


def test_a_tampered_champion_is_not_ready_and_only_its_language_fails(
        tmp_path: Path, db_url: str, tiny_model_dir: Path) -> None:
    reg = start_registry(tmp_path, db_url, tiny_model_dir)
    _, path = reg.adapter_weights(TASK, "hi", 1)
    path.chmod(0o644)
    with open(path, "ab") as f:
        f.write(b"tampered")
    with serving(tmp_path, reg, "") as url:  # the default policy: the arm is not revealed
        code, answer = call(f"{url}/readyz")
        assert code == 503 and f"{TASK}/hi v1" in answer["error"], answer
        code, answer = predict(url, ["sw", "yo"])
        assert code == 200, answer  # warm-up went on past hi; other languages serve
        assert not {"role", "version", "base"} & set(answer["predictions"][0])
        code, answer = predict(url, ["hi"])
        assert code == 503 and f"{TASK}/hi" in answer["error"], answer
        code, answer = predict(url, ["sw", "hi"])
        assert code == 503


def test_serve_refuses_to_start_without_a_token(tmp_path: Path, sqlite_url: str) -> None:
    env = {**os.environ, "XLT_HOME": str(tmp_path / "home"), "XLT_DATABASE_URL": sqlite_url}
    env.pop("XLT_SERVE_TOKENS", None)
    done = subprocess.run([sys.executable, "-m", "controller.cli", "serve", "--port",
                           str(free_port())], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    assert "XLT_SERVE_TOKENS" in done.stderr and "needs a token" in done.stderr
    env["XLT_SERVE_TOKENS"] = "short predict"
    done = subprocess.run([sys.executable, "-m", "controller.cli", "serve", "--port",
                           str(free_port())], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "16 characters" in done.stderr
    assert "short" not in done.stderr.replace("16 characters", "")
