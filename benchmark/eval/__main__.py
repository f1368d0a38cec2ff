"""``python -m benchmark.eval``: the same as ``ardrag-eval``."""

from benchmark.eval.cli import main

raise SystemExit(main())
