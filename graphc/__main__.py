"""``python -m graphc`` runs the command line."""

from graphc.cli import main

raise SystemExit(main())
