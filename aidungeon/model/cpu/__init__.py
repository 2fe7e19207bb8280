"""CPU decoding: weight layouts (int4, oneDNN prepacked) and the lean one-token decode step."""
