"""Models and what is done with them: loading (hub, path, GGUF, built-in), prompt building, decoding, scoring."""
