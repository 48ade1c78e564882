"""`keras-vit` command line: a thin dispatcher over the job modules."""

import sys


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    print("keras-vit: not yet", argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
