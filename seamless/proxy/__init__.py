"""The trajectory manager: an OpenAI-compatible proxy that records token-exact traces in Redis.

Imports no torch, ray, deepspeed or vllm: it starts in about a second and runs anywhere.
"""
