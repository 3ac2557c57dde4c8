"""The press path: the report button (``button``), the alert lifecycle (``alert``) and the
blank screen as the report sees it (``screen``).  Blank first, network second (DESIGN rule 1)."""
