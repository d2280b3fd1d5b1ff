"""Block sparsity (lecture 06): the Triton BSR kernel, the block-sparse layer, block pruning and learned block masks."""
