"""Start a vLLM server whose API key guards every route, then serve (run as a script, with the
arguments of `vllm serve`; the key comes from $VLLM_API_KEY, never the command line, which other
users of the machine can read).

vLLM's own `--api-key` guards only routes under /v1, /v2, /inference and /cohere. The dev-mode
routes seamless drives (/pause, /resume, /collective_rpc, /sleep, /reset_prefix_cache, ...) and
/metrics stay open, and /collective_rpc calls methods on the workers: on a server reachable from
other machines they must need the key too. vLLM reads its list of guarded prefixes when a request
arrives, so widening it here, before the server starts, guards every path, /health included.

This file imports nothing from seamless: it runs as a script in the server's work folder.
"""

import os
import runpy
import sys

_SERVER_MODULE = "vllm.entrypoints.launchers.api_server.entry"

if __name__ == "__main__":
    # the script's folder holds modules named like PyPI packages (watchdog): keep it off the path
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    if not os.environ.get("VLLM_API_KEY"):
        sys.exit("vllm_guard: VLLM_API_KEY is not set; refusing to serve without a key")
    from vllm.entrypoints.serve.middleware import authenticate

    authenticate.GUARDED_PREFIX = ("/",)
    sys.argv = [_SERVER_MODULE, *sys.argv[1:]]
    runpy.run_module(_SERVER_MODULE, run_name="__main__", alter_sys=True)
