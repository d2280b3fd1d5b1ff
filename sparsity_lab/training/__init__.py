"""2:4 sparse training (lecture 08): transposable masks, the training kernel and layer, the digits study, DDP and
FSDP2."""
