"""Generated protobuf and gRPC code for natter.v1 (scripts/gen; do not edit)."""
