"""`python -m mixtune ...` is the same as the `mixtune` command (so launchers can use `-m mixtune`)."""

from mixtune.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
