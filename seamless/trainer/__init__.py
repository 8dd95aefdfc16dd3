"""The DeepSpeed trainer: policy, reference and critic engines on Ray actors, driven by `Trainer`."""

from seamless.trainer.batch import MicroBatch, TrainBatch
from seamless.trainer.metrics import SftMetrics, StepMetrics
from seamless.trainer.trainer import Trainer, latest_checkpoint

__all__ = ["MicroBatch", "SftMetrics", "StepMetrics", "TrainBatch", "Trainer", "latest_checkpoint"]
