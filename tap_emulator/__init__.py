"""tap-emulator: the analysis emulator for Envoy's TapSinkService."""

__version__ = "0.1.0"
