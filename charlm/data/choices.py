"""The fixed values the data options take that are no setting (--errors), cheap for the CLI."""

from __future__ import annotations

ERRORS = ("strict", "replace")  # what reading does with invalid UTF-8 (codecs' error handlers)
