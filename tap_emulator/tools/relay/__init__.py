"""`tap-emulator relay`: forward a stock Envoy's admin `/tap` stream to a TapSinkService.

    Envoy admin /tap (HTTP/1.1, chunked JSON) -> reader -> bounded queue -> sender -> gRPC

One concern per module, in the order data flows:
- `settings`: the one table of settings (its flags are generated from it); `tap_config`:
  what is posted to Envoy;
- `envoy`: the admin side: Envoy's identity, attaching to `/tap`, splitting, weighing and
  converting the JSON traces (`convert`), counting what is skipped, re-attaching;
- `queue`: the bounded queue between the two sides;
- `sender` and `upstream`: StreamTaps calls to the emulator, its gRPC health, reconnects;
- `relay`: runs both sides, stops, drains, reports; `stats` and `backoff` serve it;
- `command`: the subcommand: flags, logging, signals, exit status.
"""

from tap_emulator.tools.relay.command import main, register

__all__ = ["main", "register"]
