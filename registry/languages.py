"""BCP-47 language tags: validation, canonical form, and the parent chain used by routing."""

from __future__ import annotations

from functools import lru_cache

from registry.errors import InvalidLanguage


@lru_cache(maxsize=4096)
def canonical_language(tag: str) -> str:
    """Canonical BCP-47 form of `tag` (CLDR's `sr_Latn` becomes `sr-Latn`); unknown tags refused."""
    raw = (tag or "").strip()
    if not raw:
        raise InvalidLanguage("empty language tag", "give a BCP-47 tag such as sw, yo or sr-Latn")
    import langcodes  # on use: its tables cost ~40 ms, and `xlt status` needs no tag

    candidate = raw.replace("_", "-")
    try:
        parsed = langcodes.Language.get(candidate, normalize=False)
    except (langcodes.LanguageTagError, ValueError) as exc:
        raise InvalidLanguage(f"{tag!r} is not a BCP-47 language tag ({exc})",
                              "give a tag such as sw, yo, hi-Latn or sr-Latn") from exc
    if not parsed.is_valid() or parsed.language in (None, "und"):
        raise InvalidLanguage(f"unknown language tag {tag!r}",
                              "use a registered IANA language subtag, e.g. sw, yo, hi-Latn")
    return parsed.to_tag()


def parent_languages(tag: str) -> list[str]:
    """Tags to fall back to, most specific first: sr-Latn-RS -> [sr-Latn, sr]."""
    parts = canonical_language(tag).split("-")
    return ["-".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]
