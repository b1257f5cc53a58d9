"""Tools built on the emulator's pieces: inspect (and, later, relay and replay)."""
