"""The batcher and the auth pieces of `xlt serve` in-process (no model, no database): a
request that makes its batch fail fails alone; tokens and receipts."""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from controller.serve.app import Batcher
from controller.serve.auth import Authenticator, Receipts, parse_tokens, token_id
from controller.serve.engine import Request
from registry.errors import InvalidInput


class FailingEngine:
    """Raises for any batch holding the text "boom" (as a database error would)."""

    def __init__(self) -> None:
        self.batches: list[int] = []
        self.lock = threading.Lock()

    def predict(self, requests: Sequence[Request]) -> list[Any]:
        with self.lock:
            self.batches.append(len(requests))
        if any("boom" in t for r in requests for t in r.texts):
            raise RuntimeError("the whole batch failed")
        return [list(r.texts) for r in requests]

    def start_thread(self) -> None:
        pass


@pytest.mark.parametrize("threads", [1, 2])
def test_a_request_that_fails_its_batch_fails_alone(threads: int) -> None:
    engine = FailingEngine()
    batcher = Batcher(engine, max_batch_rows=64, max_wait_ms=50,  # type: ignore[arg-type]
                      threads=threads)
    try:
        texts = [["boom"] if i % 7 == 3 else [f"ok {i}"] for i in range(40)]
        futures = [batcher.submit(Request("t", ["sw"], t, ["k"])) for t in texts]
        cf.wait(futures, timeout=30)
        for t, fut in zip(texts, futures, strict=True):
            if t == ["boom"]:
                assert isinstance(fut.exception(), RuntimeError)
            else:
                assert fut.result() == t
        assert max(engine.batches) > 1  # they were batched together, then isolated
    finally:
        batcher.close()


def test_tokens_scopes_and_receipts() -> None:
    token = "a" * 20
    auth = Authenticator(parse_tokens(f"# ops\n{token} predict,feedback  # a client\n"
                                      f"{'b' * 20} admin", "file"))
    caller = auth.caller(f"Bearer {token}")
    assert caller is not None and caller.scopes == {"predict", "feedback"}
    assert caller.token_id == token_id(token) and token not in caller.token_id
    assert auth.caller(None) is None and auth.caller(f"Basic {token}") is None
    assert auth.caller("Bearer " + "a" * 19) is None
    assert Authenticator.from_config(True, None, env=f"{token} predict;{'c' * 16} admin")
    for bad, needle in [("short predict", "16 characters"), (f"{token}", "TOKEN scope"),
                        (f"{token} read", "unknown scopes")]:
        with pytest.raises(InvalidInput, match=needle) as err:
            parse_tokens(bad, "XLT_SERVE_TOKENS")
        assert token not in str(err.value)
    with pytest.raises(InvalidInput, match="needs a token"):
        Authenticator.from_config(True, None, env="")
    assert Authenticator.from_config(False, None, env="").caller(None) is not None

    receipts = Receipts(b"k" * 32)
    r = receipts.issue(42, "task", "me")
    assert receipts.check(r, "task", "me") == 42
    assert receipts.check(r, "task", "you") is None  # another caller's
    assert receipts.check(r, "other", "me") is None  # another task's
    assert receipts.check("42", "task", "me") is None
    assert receipts.check(r.replace("42.", "43."), "task", "me") is None
    assert receipts.check("\u0664\u0662." + r.split(".")[1], "task", "me") is None
    assert Receipts(b"j" * 32).check(r, "task", "me") is None  # another home's key
