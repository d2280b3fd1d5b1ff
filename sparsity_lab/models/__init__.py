"""Whole real models end to end: ViT-L/16 and a Llama-shaped decoder, dense against their sparse swaps."""
