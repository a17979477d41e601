"""`python -m mice_index ...` is the `mice-index` command."""

from mice_index.cli import main

if __name__ == "__main__":
    main()
