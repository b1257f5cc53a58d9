"""Helpers for the test suite: subprocess clients and servers, message builders."""
