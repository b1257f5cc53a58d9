"""The ext_proc benchmark: what tapping costs a real Envoy, three ways side by side.

- `envoys`: the bootstraps: the Envoy under test (one listener per arm: no tap, the tap
  filter with `file_per_tap`, the ext_proc filter to the emulator) and a fast upstream
  Envoy that answers with `direct_response`;
- `h2load`: the load client (nghttp2's h2load): the request mix, closed loop or fixed
  rate, per-request latencies from its log;
- `phase`: the rounds, interleaved across arms, and what each costs Envoy and the emulator.
"""
