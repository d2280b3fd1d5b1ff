"""Semi-structured 2:4 sparsity (lecture 05): the layout and metadata, the Triton compressor, our cuSPARSELt
binding, value slots, the 2:4 matmul paths and layer, plots, widget and benchmark."""
