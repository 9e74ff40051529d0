"""``python -m detector`` is the ``podguard`` command."""

from detector.cli import main

raise SystemExit(main())
