"""Sparsity patterns (lecture 02): one mask function per pattern, the pattern study, its plots, widget and benchmark."""
