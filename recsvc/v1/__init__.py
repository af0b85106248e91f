"""Generated gRPC/protobuf code of protos/recsvc/v1 (``make protos``; never edited by hand)."""
