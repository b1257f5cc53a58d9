"""The server: `build` composes an `Emulator` from the settings (`compose`), `run` and `serve`
start it, serve until a signal, drain and stop it (`lifecycle`, `signals`)."""

from tap_emulator.app.compose import Emulator, build, build_deriver
from tap_emulator.app.grpc_options import grpc_server_options, server_credentials
from tap_emulator.app.lifecycle import StartupError, run, serve, start, stop
from tap_emulator.app.signals import SignalWatch

__all__ = [
    "Emulator",
    "SignalWatch",
    "StartupError",
    "build",
    "build_deriver",
    "grpc_server_options",
    "run",
    "serve",
    "server_credentials",
    "start",
    "stop",
]
