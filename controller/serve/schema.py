"""Request and response bodies of `xlt serve` (validated by pydantic, so a malformed
request is answered 422 with the field and the reason before it reaches a model)."""

from __future__ import annotations

from typing import Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_TEXTS = 256
MAX_CHARS = 2000


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=100)
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS)
    language: str | None = Field(None, min_length=1, max_length=35,
                                 description="the language of every text")
    languages: list[str] | None = Field(None, description="one language per text (a mixed "
                                        "batch); instead of `language`")
    routing_key: str | None = Field(None, max_length=200, description="sticky canary "
                                    "assignment, e.g. a user or session id")
    routing_keys: list[str] | None = Field(None, description="one key per text")

    @model_validator(mode="after")
    def _shape(self) -> Self:
        n = len(self.texts)
        if any(not t.strip() or len(t) > MAX_CHARS for t in self.texts):
            raise ValueError(f"every text must be non-blank and at most {MAX_CHARS} characters")
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
    prediction_id: int | None
    label: str
    confidence: float
    probabilities: dict[str, float]
    language: str
    served_language: str
    version: int
    role: str
    base: str


class PredictResponse(BaseModel):
    task: str
    predictions: list[Prediction]


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prediction_id: int = Field(ge=1)
    label: str = Field(min_length=1, max_length=100)


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(min_length=1, max_length=100)
    feedback: list[FeedbackItem] = Field(min_length=1, max_length=10000)
