"""`python -m sparsity_lab` runs the command-line interface."""

from sparsity_lab.course.cli import main

raise SystemExit(main())
