"""Course plumbing: the digits data and models, the training loop, grading, doctor, the CLI and the results format."""
