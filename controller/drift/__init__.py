"""Per-language drift monitoring (issue 4): descriptors, signals, references, the check,
a traffic simulator, and the registry glue (store). The controller calls
`controller.drift.check.check_language` / `check_many` (or `store.check_from_registry`)."""
