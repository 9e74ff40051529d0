"""``python -m training`` is ``podguard train``."""

from detector.cli import main

raise SystemExit(main(["train", *__import__("sys").argv[1:]]))
