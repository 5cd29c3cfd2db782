"""The benchmark suite (``blockstore bench``): the engine against a plain file in the same run."""
