"""Tools built on the emulator's pieces: inspect, relay (stock Envoy's admin /tap stream to
StreamTaps) and replay (trace files to StreamTaps)."""
