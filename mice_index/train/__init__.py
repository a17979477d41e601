"""`mice-index train`: distillation of a teacher into a MICE model (see trainer.py)."""

from mice_index.train.config import TrainConfig, load_config, with_overrides
from mice_index.train.loss import listwise_kl, margin_mse
from mice_index.train.trainer import Trainer, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "Trainer", "listwise_kl", "load_config", "margin_mse", "train",
           "with_overrides"]
