"""The languages of the CLDR demo task the tests register (controller.data.cldr.
register_task, the public path): the ones tests train, gate or serve; fewer than the
shipped 27 keeps each registry's setup under a second."""

TEST_LANGUAGES = ("en", "sw", "hi", "hi-Latn", "yo", "yo-BJ", "am", "fr", "de", "ha", "zu",
                  "fil", "sr", "sr-Latn")
