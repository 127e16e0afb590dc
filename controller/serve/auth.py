"""Who may call `xlt serve`, and proof that a feedback label is for a prediction its caller
was given.

Tokens come from `$XLT_SERVE_TOKENS` and/or the policy's `[serve] tokens_file`: one token a
line (or `;`-separated in the variable), `TOKEN scope,scope`, scopes `predict`,
`feedback`, `admin`; `#` starts a comment. A token is compared in constant time
(hmac.compare_digest) and is never logged: a caller is named by the first 12 hex digits of
its token's SHA-256 (its `token_id`).

Receipts: the `prediction_id` a client gets is `<row id>.<signature>`, the signature an
HMAC-SHA256 of (row id, task, token_id) under a key kept in XLT_HOME (`serve.key`, 0600,
created on first use, shared by every `xlt serve` of that home). Feedback is accepted only
with a receipt signed for the caller's own token, so an id cannot be guessed, and a label
cannot be put on another client's prediction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from registry.errors import InvalidInput

SCOPES = ("predict", "feedback", "admin")
MIN_TOKEN_CHARS = 16
ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Caller:
    token_id: str
    scopes: frozenset[str]


def token_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def parse_tokens(text: str, where: str) -> list[tuple[str, frozenset[str]]]:
    """`TOKEN scope,scope` entries, one a line (or `;`-separated); a bad entry is refused
    with its line number, never its token."""
    out = []
    for n, raw in enumerate(text.replace(";", "\n").splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise InvalidInput(f"{where} entry {n} is not `TOKEN scope,scope`",
                               f"scopes: {', '.join(SCOPES)}")
        token, scopes = parts[0], frozenset(s for s in parts[1].split(",") if s)
        if len(token) < MIN_TOKEN_CHARS:
            raise InvalidInput(f"{where} entry {n}: a token needs at least "
                               f"{MIN_TOKEN_CHARS} characters",
                               "make one with `python -c 'import secrets; "
                               "print(secrets.token_urlsafe(32))'`")
        unknown = sorted(scopes - set(SCOPES))
        if unknown or not scopes:
            raise InvalidInput(f"{where} entry {n}: unknown scopes {unknown}",
                               f"scopes: {', '.join(SCOPES)}")
        out.append((token, scopes))
    return out


class Authenticator:
    def __init__(self, tokens: list[tuple[str, frozenset[str]]], required: bool = True):
        self.required = required
        self._tokens = [(t.encode(), token_id(t), s) for t, s in tokens]

    @classmethod
    def from_config(cls, required: bool, tokens_file: str | None,
                    env: str | None = None) -> Authenticator:
        env = os.environ.get("XLT_SERVE_TOKENS") if env is None else env
        tokens = parse_tokens(env or "", "XLT_SERVE_TOKENS")
        if tokens_file:
            path = Path(tokens_file).expanduser()
            try:
                text = path.read_text()
            except OSError as exc:
                raise InvalidInput(f"[serve] tokens_file {path} cannot be read: "
                                   f"{exc.strerror}", "create it or fix the path") from exc
            tokens += parse_tokens(text, str(path))
        if required and not tokens:
            raise InvalidInput("xlt serve needs a token: none is configured and "
                               "[serve] require_auth is true",
                               "set XLT_SERVE_TOKENS='TOKEN predict,feedback' (a token of "
                               "16+ characters) or [serve] tokens_file in the policy; see "
                               "docs/serving.md#authentication")
        return cls(tokens, required)

    def caller(self, authorization: str | None) -> Caller | None:
        """The caller a header names; None for no or an unknown token. Every configured
        token is compared, in constant time, whatever matches."""
        if not self.required:
            return Caller(ANONYMOUS, frozenset(SCOPES))
        if not authorization or not authorization.startswith("Bearer "):
            return None
        given = authorization[len("Bearer "):].strip().encode()
        found = None
        for token, tid, scopes in self._tokens:
            if hmac.compare_digest(token, given) and found is None:
                found = Caller(tid, scopes)
        return found


def receipt_key(home: Path) -> bytes:
    """The per-home signing key of receipts (created 0600 on first use)."""
    path = Path(home) / "serve.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(secrets.token_bytes(32))
    return path.read_bytes()


class Receipts:
    def __init__(self, key: bytes) -> None:
        self._key = key

    def _sig(self, pid: int, task: str, tid: str) -> str:
        mac = hmac.new(self._key, f"{pid}|{task}|{tid}".encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(mac[:18]).decode()

    def issue(self, pid: int, task: str, tid: str) -> str:
        return f"{pid}.{self._sig(pid, task, tid)}"

    def check(self, receipt: str, task: str, tid: str) -> int | None:
        """The row id of a receipt signed for this task and caller; None otherwise."""
        pid, _, sig = receipt.partition(".")
        if not (pid.isascii() and pid.isdigit()) or not sig or len(pid) > 18:
            return None
        if not hmac.compare_digest(sig.encode(), self._sig(int(pid), task, tid).encode()):
            return None
        return int(pid)
