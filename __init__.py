"""leanvision: token-efficient vision-language models that behave like any model on the Hugging Face Hub.

Importing the package registers its configs and models with transformers' Auto classes, so folders saved by
`training/train.py` load with `AutoModel...from_pretrained(folder)` while leanvision is installed; exported bundles
load anywhere with `trust_remote_code=True`.
"""

from transformers import AutoConfig, AutoModel, AutoModelForImageClassification

from .configuration.configuration_dtp_vit import DTPViTConfig
from .modeling.modeling_dtp_vit import DTPViTForImageClassification, DTPViTModel

__version__ = "0.1.0"

AutoConfig.register(DTPViTConfig.model_type, DTPViTConfig, exist_ok=True)
AutoModel.register(DTPViTConfig, DTPViTModel, exist_ok=True)
AutoModelForImageClassification.register(DTPViTConfig, DTPViTForImageClassification, exist_ok=True)

__all__ = ["DTPViTConfig", "DTPViTModel", "DTPViTForImageClassification"]
