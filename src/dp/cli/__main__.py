"""`python -m dp.cli ...` is `dp ...` (the tests start dp this way)."""

from dp.cli.main import main

if __name__ == "__main__":
    main()
