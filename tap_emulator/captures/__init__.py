"""Captures: read what the emulator and Envoy's `file_per_tap` sink wrote, as HTTP
transactions a person can read (list, show) and standard tools can open (HAR, pcapng).

This room imports only the generated protobuf code and pure helpers (derive's naming rules):
never the server, gRPC, the writer or the command line, so that a web page can use it too.
"""
