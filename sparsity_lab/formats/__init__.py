"""Storage formats (lecture 03): our COO / CSR / BSR, their plots, widget and the CPU crossover benchmark."""
