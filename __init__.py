"""leanvision: token-efficient vision-language models that behave like any model on the Hugging Face Hub.

Importing the package registers its configs, models and processors with transformers' Auto classes, so folders
saved by `training/train.py` load with `AutoModel...from_pretrained(folder)` while leanvision is installed, and
registers the "image-to-text" pipeline of its captioners; exported bundles load anywhere with
`trust_remote_code=True`.
"""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForImageTextToText,
    AutoModelForZeroShotImageClassification,
    AutoProcessor,
)
from transformers import pipelines as transformers_pipelines
from transformers.pipelines import PIPELINE_REGISTRY

from .configuration.configuration_dtp_clip import DTPCLIPConfig
from .configuration.configuration_dtp_llava import DTPLlavaConfig
from .configuration.configuration_dtp_vit import DTPViTConfig
from .configuration.configuration_gated_sparse_blip import GatedSparseBlipConfig
from .configuration.configuration_qvision import QVisionConfig
from .modeling.modeling_dtp_clip import DTPCLIPModel
from .modeling.modeling_dtp_llava import DTPLlavaForConditionalGeneration
from .modeling.modeling_dtp_vit import DTPViTForImageClassification, DTPViTModel
from .modeling.modeling_gated_sparse_blip import GatedSparseBlipForConditionalGeneration, GatedSparseBlipModel
from .processing.pipeline_image_classification import ImageClassificationPipeline
from .processing.pipeline_image_to_text import ImageToTextPipeline
from .processing.pipeline_zero_shot import ZeroShotImageClassificationPipeline
from .processing.processing_dtp_clip import DTPCLIPProcessor
from .processing.processing_dtp_llava import DTPLlavaProcessor
from .modeling.modeling_qvision import QVisionForConditionalGeneration, QVisionModel
from .processing.processing_gated_sparse_blip import GatedSparseBlipProcessor
from .processing.processing_qvision import QVisionProcessor

__version__ = "0.1.0"

AutoConfig.register(DTPViTConfig.model_type, DTPViTConfig, exist_ok=True)
AutoModel.register(DTPViTConfig, DTPViTModel, exist_ok=True)
AutoModelForImageClassification.register(DTPViTConfig, DTPViTForImageClassification, exist_ok=True)

AutoConfig.register(DTPCLIPConfig.model_type, DTPCLIPConfig, exist_ok=True)
AutoModel.register(DTPCLIPConfig, DTPCLIPModel, exist_ok=True)
AutoModelForZeroShotImageClassification.register(DTPCLIPConfig, DTPCLIPModel, exist_ok=True)
AutoProcessor.register(DTPCLIPConfig, DTPCLIPProcessor, exist_ok=True)

AutoConfig.register(DTPLlavaConfig.model_type, DTPLlavaConfig, exist_ok=True)
AutoModelForImageTextToText.register(DTPLlavaConfig, DTPLlavaForConditionalGeneration, exist_ok=True)
AutoProcessor.register(DTPLlavaConfig, DTPLlavaProcessor, exist_ok=True)

AutoConfig.register(GatedSparseBlipConfig.model_type, GatedSparseBlipConfig, exist_ok=True)
AutoModel.register(GatedSparseBlipConfig, GatedSparseBlipModel, exist_ok=True)
AutoModelForImageTextToText.register(GatedSparseBlipConfig, GatedSparseBlipForConditionalGeneration, exist_ok=True)
AutoProcessor.register(GatedSparseBlipConfig, GatedSparseBlipProcessor, exist_ok=True)

AutoConfig.register(QVisionConfig.model_type, QVisionConfig, exist_ok=True)
AutoModel.register(QVisionConfig, QVisionModel, exist_ok=True)
AutoModelForImageTextToText.register(QVisionConfig, QVisionForConditionalGeneration, exist_ok=True)
AutoProcessor.register(QVisionConfig, QVisionProcessor, exist_ok=True)

# "image-to-text" for every captioner: folders saved by train.py, exports, and in-memory model + processor objects.
PIPELINE_REGISTRY.register_pipeline(
    "image-to-text", pipeline_class=ImageToTextPipeline, pt_model=AutoModelForImageTextToText
)
# "zero-shot-image-classification" and "image-classification": transformers' pipelines with leanvision's image loader
# and checked input (one comma-separated string of labels splits into labels, empty labels or image lists are
# refused); same default models, no "overwriting" warning.
for _task, _pipeline_class in (("zero-shot-image-classification", ZeroShotImageClassificationPipeline),
                               ("image-classification", ImageClassificationPipeline)):
    PIPELINE_REGISTRY.supported_tasks[_task] = {**PIPELINE_REGISTRY.supported_tasks[_task], "impl": _pipeline_class}
_redirect_removed_task = transformers_pipelines._resolve_deprecated_task


def _keep_registered_image_to_text(task: str) -> str:
    """transformers 5 renames the task "image-to-text" to "image-text-to-text" (which demands a text prompt) before
    it looks the name up; once registered above, "image-to-text" keeps its name and gets `ImageToTextPipeline`."""
    if task == "image-to-text" and task in PIPELINE_REGISTRY.supported_tasks:
        return task
    return _redirect_removed_task(task)


transformers_pipelines._resolve_deprecated_task = _keep_registered_image_to_text

__all__ = [
    "DTPCLIPConfig",
    "DTPCLIPModel",
    "DTPCLIPProcessor",
    "DTPLlavaConfig",
    "DTPLlavaForConditionalGeneration",
    "DTPLlavaProcessor",
    "DTPViTConfig",
    "DTPViTModel",
    "DTPViTForImageClassification",
    "GatedSparseBlipConfig",
    "GatedSparseBlipModel",
    "GatedSparseBlipForConditionalGeneration",
    "GatedSparseBlipProcessor",
    "ImageClassificationPipeline",
    "ImageToTextPipeline",
    "ZeroShotImageClassificationPipeline",
    "QVisionConfig",
    "QVisionModel",
    "QVisionForConditionalGeneration",
    "QVisionProcessor",
]
