"""Derive: what a trace is called on disk and what it holds once redacted; pure rules plus the
bounded state they need, with no network and no disk."""
