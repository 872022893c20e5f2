import sys

from .apps.cli import main

if __name__ == '__main__':  # importing this module (a reference build) runs nothing
    sys.exit(main())
