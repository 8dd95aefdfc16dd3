import sys

from seamless.cli import main

sys.exit(main(["proxy", *sys.argv[1:]]))
