"""Methods seamless adds to every vLLM worker (`--worker-extension-cls`), called over HTTP through
the dev-mode `/collective_rpc` route.

This module is imported inside vLLM's worker processes: it imports nothing from seamless and
touches vLLM only through the worker it extends.
"""

from __future__ import annotations

from typing import Any


class SeamlessWorkerExtension:
    """Mixed into vLLM's worker class; `self` is the worker (it has `model_runner`)."""

    def refresh_tied_lm_head(self) -> bool:
        """Make a tied output head compute with the embedding's current weights; True if it had to.

        On CPU, vLLM 0.32 gives each embedding-shaped layer a GEMM closure over a packed copy of its
        weight once, after the first load. An in-place weight reload refreshes the embedding's copy
        but not the head's when the head is tied (the checkpoint has no `lm_head.weight`, so the
        head layer is never reprocessed): the server would go on sampling from the old head. Calling
        this after every reload repacks the head from the shared, already updated weight. On CUDA the
        head reads the shared weight directly and nothing needs doing.
        """
        model = self.model_runner.get_model()  # type: ignore[attr-defined]
        head, embed = _tied_pair(model)
        if head is None or not hasattr(head, "cpu_linear"):
            return False
        from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

        dispatch_cpu_unquantized_gemm(head, remove_weight=False)
        return True


def _tied_pair(model: Any) -> tuple[Any, Any]:
    """(lm_head, embed_tokens) when the two share one weight tensor, else (None, None)."""
    head = getattr(model, "lm_head", None)
    inner = getattr(model, "model", None)
    embed = getattr(inner, "embed_tokens", None)
    if head is None or embed is None:
        return None, None
    weight, shared = getattr(head, "weight", None), getattr(embed, "weight", None)
    if weight is None or shared is None or weight.data_ptr() != shared.data_ptr():
        return None, None
    return head, embed
