"""V2 protocol: REST codec (JSON + binary tensor extension), gRPC messages and codec, error mapping."""
