"""Ingest: the gRPC sources that receive taps (Envoy's TapSinkService, and more to come) and
hand each trace to derive and the writers."""
