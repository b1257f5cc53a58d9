"""End-to-end tests through a real Envoy, and the process harness `make demo` shares."""
