"""Why structure matters on a GPU (lecture 04): the benchmark and its chart."""
