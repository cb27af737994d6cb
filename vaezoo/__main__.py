"""``python -m vaezoo``: the same as the ``vaezoo`` command."""

from vaezoo.cli import main

if __name__ == "__main__":
    main()
