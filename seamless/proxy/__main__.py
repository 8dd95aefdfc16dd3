"""`python -m seamless.proxy`: the trajectory manager alone, the process `seamless proxy` and
`ProxyProcess` run (it imports the proxy's own entry point, never the CLI above it)."""

import sys

from seamless.errors import SeamlessError
from seamless.proxy.server import main

try:
    sys.exit(main(sys.argv[1:]))
except SeamlessError as exc:
    print(f"seamless proxy: error: {exc}", file=sys.stderr)
    sys.exit(2)
