"""``python -m rpusim``: the same command line as the ``rpusim`` script."""

from rpusim.cli import main

raise SystemExit(main())
