"""Request and response bodies of `xlt serve` (validated by pydantic, so a malformed
request is answered 422 with the field and the reason before it reaches a model).

Every string a client sends is checked here, before it can join a batch: a lone UTF-16
surrogate (SQLite cannot store it), a NUL byte (PostgreSQL cannot) or another control
character is refused; text is NFC-normalised (lossless). The counts and lengths the policy
bounds (`[serve] max_texts_per_request`, ...) are checked by the app (413); the bounds here
are the hard ones above any policy.
"""

from __future__ import annotations

import unicodedata
from typing import Annotated, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

MAX_TEXTS = 4096
MAX_CHARS = 100_000
MAX_FEEDBACK = 10_000
ALLOWED_CONTROLS = {"\t", "\n", "\r"}


def clean(value: str) -> str:
    """NFC of a string a client sent; a lone surrogate or a control character refused."""
    for i, ch in enumerate(value):
        cat = unicodedata.category(ch)
        if cat == "Cs":
            raise ValueError(f"character {i} is a lone UTF-16 surrogate (U+{ord(ch):04X}); "
                             "send valid UTF-8 text")
        if cat == "Cc" and ch not in ALLOWED_CONTROLS:
            raise ValueError(f"character {i} is the control character U+{ord(ch):04X}; "
                             "remove it")
    return unicodedata.normalize("NFC", value)


Clean = Annotated[str, AfterValidator(clean)]


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Clean = Field(min_length=1, max_length=100)
    texts: list[Annotated[Clean, Field(max_length=MAX_CHARS)]] = Field(
        min_length=1, max_length=MAX_TEXTS)
    language: Clean | None = Field(None, min_length=1, max_length=35,
                                   description="the language of every text")
    languages: list[Clean] | None = Field(None, description="one language per text (a "
                                          "mixed batch); instead of `language`")
    routing_key: Clean | None = Field(None, max_length=200, description="sticky canary "
                                      "assignment, e.g. a user or session id")
    routing_keys: list[Clean] | None = Field(None, description="one key per text")

    @model_validator(mode="after")
    def _shape(self) -> Self:
        n = len(self.texts)
        if any(not t.strip() for t in self.texts):
            raise ValueError("every text must be non-blank")
        if (self.language is None) == (self.languages is None):
            raise ValueError("give exactly one of `language` or `languages`")
        if self.languages is not None and len(self.languages) != n:
            raise ValueError(f"`languages` has {len(self.languages)} entries for {n} texts")
        if (self.routing_key is None) == (self.routing_keys is None):
            raise ValueError("give exactly one of `routing_key` or `routing_keys`")
        if self.routing_keys is not None and (
                len(self.routing_keys) != n or any(len(k) > 200 for k in self.routing_keys)):
            raise ValueError(f"`routing_keys` needs {n} keys of at most 200 characters")
        return self


class Prediction(BaseModel):
    prediction_id: str | None = Field(None, description="the receipt /v1/feedback takes")
    label: str
    confidence: float
    probabilities: dict[str, float]
    language: str
    served_language: str
    # which arm served the row: only with [serve] reveal_arm = true
    version: int | None = None
    role: str | None = None
    base: str | None = None


class PredictResponse(BaseModel):
    task: str
    predictions: list[Prediction]


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: Clean = Field(min_length=1, max_length=100,
                                 description="the receipt /v1/predict returned")
    label: Clean = Field(min_length=1, max_length=100)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Clean = Field(min_length=1, max_length=100)
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=MAX_FEEDBACK)
