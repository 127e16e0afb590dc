"""Pictures for people: `xlt report languages` (controller.reports.languages)."""
