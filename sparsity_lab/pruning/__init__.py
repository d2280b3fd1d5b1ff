"""Pruning and saliency (lectures 00 and 01): masks through `parametrize`, saliency scores, Hessian diagonals, OBD."""
