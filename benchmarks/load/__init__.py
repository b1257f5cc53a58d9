"""Benchmark load: realistic tap traffic, the files it must become, and the check.

- `payloads`: the traffic mix (buffered HTTP/1.1 and HTTP/2 traces, streamed gRPC
  segments, bodies from empty to 64 KiB), pre-serialized once per process with the
  product's own generated code (never xds-protos in the same process: both register
  the same proto names);
- `client`: one load-generator process (grpc.aio client, raw bytes, many proxies and
  streams, closed or open loop);
- `verify`: what the output directory must hold after a run, file by file.
"""
