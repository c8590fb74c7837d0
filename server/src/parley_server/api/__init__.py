"""The gRPC edge: servicer, proto <-> domain conversion, validation, status mapping."""
