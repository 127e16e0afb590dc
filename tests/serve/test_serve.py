"""`xlt serve` as a user runs it: a real process on a loopback port, mixed-language batches,
a promotion and a rollback made by another process picked up without restart, the traffic
log, feedback, and bad requests answered 4xx with a reason."""

from __future__ import annotations

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
    multi.encoder.model.register_forward_hook(lambda *a: calls.append(1))
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


def call(url: str, body: Any = None, raw: bytes | None = None) -> tuple[int, dict[str, Any]]:
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None
                                        else None)
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def xlt(home: Path, db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XLT_HOME": str(home), "XLT_DATABASE_URL": db, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "controller.cli", "--actor", "ops", *args],
                          env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture
def served(tmp_path: Path, db_url: str, tiny_model_dir: Path) -> Iterator[tuple[str, Registry]]:
    home = tmp_path / "home"
    reg = Registry(load_settings(home=home, database_url=db_url), "tester")
    reg.init()
    reg.register_encoder("tiny", "1", tiny_model_dir)
    for seed, lang in enumerate(["sw", "yo", "hi"], start=1):
        register_lora(reg, tiny_model_dir, tmp_path, lang, seed)
        reg.promote(TASK, lang, 1)
    register_lora(reg, tiny_model_dir, tmp_path, "sw", 10)  # sw v2, a candidate
    policy = tmp_path / "policy.toml"
    policy.write_text('no_text_languages = ["yo"]\n')
    port = free_port()
    env = {**os.environ, "XLT_HOME": str(home), "XLT_DATABASE_URL": db_url}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - kept by the child
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "serve", "--host",
                             "127.0.0.1", "--port", str(port), "--policy", str(policy)],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            with contextlib.suppress(OSError):
                if call(f"{url}/readyz")[0] == 200:
                    break
            time.sleep(0.2)
        else:
            pytest.fail("xlt serve was not ready in 120 s")
        yield url, reg
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


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
        {"prediction_id": pid, "label": "animals"}]})
    assert (code, fb["recorded"]) == (200, 1)
    with reg.reading() as s:
        assert s.get(InferenceEvent, pid).feedback_label == "animals"


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
        {"prediction_id": 999999, "label": "animals"}]})
    assert code == 404 and "999999" in answer["error"]
    code, answer = call(f"{url}/healthz")
    assert (code, answer["status"]) == (200, "ok")
