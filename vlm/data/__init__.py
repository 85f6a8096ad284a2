"""Data: the embedded synthetic world, readers of the input formats, tokens, shards and mixing."""
