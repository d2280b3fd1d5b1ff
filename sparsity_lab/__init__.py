"""sparsity_lab: neural-network sparsity in PyTorch, as a course and as a library.

The package needs only torch and numpy; course helpers (plots, widgets, the digits data) import their
extra dependencies lazily and say which extra to install when one is missing.
"""

__version__ = "0.1.0"
