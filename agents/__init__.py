"""Example agents for seamless: programs that only know an OpenAI base URL and key.

`AGENTS` maps the names a recipe's `rollout.agent` may use to `module:function` specs.
"""

AGENTS = {
    "math": "agents.math_agent:run",
    "listing": "agents.list_agent:run",
    "calculator": "agents.calculator_agent:run",
    "openai-agents": "agents.openai_sdk_calculator:run",
}
DEFAULT_REWARD = "agents.rewards:integer_match"
