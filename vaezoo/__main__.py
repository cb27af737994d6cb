"""``python -m vaezoo``: the same as the ``vaezoo`` command."""

from vaezoo.command import main

if __name__ == "__main__":
    main()
