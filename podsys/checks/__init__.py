"""Acceptance checks: one module per area, pure parsers and threshold logic.

`registry` lists the live areas (probes + judge) and the tool outputs `podsys check parse`
understands; `findings` is the result type every check returns."""
