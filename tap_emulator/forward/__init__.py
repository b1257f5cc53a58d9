"""Forward: every accepted trace, streamed on to a TapSinkService tool (forward_to).

The emulator hands traces to `link.ForwardLink`, which feeds a forwarding process of its own
(`child`) over a socket; there `forwarder.Forwarder` queues them (`queue`) and writes one
StreamTaps stream per sender (`wire`, `channel`).
"""
