"""Thin ipywidgets shells around `sparsity_lab.plots`, one module per topic."""
