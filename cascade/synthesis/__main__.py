"""``python -m cascade.synthesis``: write generated cases (see cascade.synthesis.dataset)."""

from cascade.synthesis.dataset import main

raise SystemExit(main())
