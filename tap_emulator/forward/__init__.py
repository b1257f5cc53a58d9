"""Forward: every accepted trace, streamed on to a TapSinkService tool (forward_to)."""
