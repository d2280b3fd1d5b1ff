"""A pretrained transformer pruned offline (lecture 10): all-MiniLM-L6-v2 in our own BERT, SparseGPT's study."""
