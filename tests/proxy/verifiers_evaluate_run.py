"""Run in verifiers' own venv by tests/proxy/test_agent_frameworks.py: verifiers' own `evaluate`,
one client for every rollout, each rollout sending `X-Session-ID: <its trajectory id>` (verifiers'
`extra_headers_from_state`). Prints a JSON report on its last line.

usage: python verifiers_evaluate_run.py BASE_URL API_KEY ENVS_FOLDER
"""

import asyncio
import json
import os
import sys


async def main(base_url: str, api_key: str, envs: str) -> None:
    sys.path.insert(0, envs)
    import verifiers as vf
    from verifiers.legacy.types import ClientConfig

    os.environ["SEAMLESS_SESSION_KEY"] = api_key
    env = vf.load_environment("tiny-arith")
    client = ClientConfig(api_base_url=base_url, api_key_var="SEAMLESS_SESSION_KEY", max_retries=0,
                          extra_headers_from_state={"X-Session-ID": "trajectory_id"})
    results = await env.evaluate(client, "m", sampling_args={"max_tokens": 3, "temperature": 1.0},
                                 num_examples=3, rollouts_per_example=2, state_columns=["trajectory_id"])
    outputs = results["outputs"]
    print(json.dumps({"trajectory_ids": [o["trajectory_id"] for o in outputs],
                      "completions": [o["completion"][-1]["content"] if o["completion"] else "" for o in outputs],
                      "rewards": [o["reward"] for o in outputs]}))


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
