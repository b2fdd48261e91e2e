"""Stand-in of ``sgm.modules`` (the real one also exports ``GeneralConditioner``, which the tests do not need)."""
