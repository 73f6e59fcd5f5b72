"""Serving exported models over TF Serving's REST and gRPC contract."""
