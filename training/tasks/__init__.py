"""The training tasks: `TASKS[family.task](family, model_args, data_args, training_args) -> TaskSetup`."""

from .captioning import setup_captioning
from .classification import setup_image_classification
from .contrastive import setup_contrastive
from .visual_instruction import setup_visual_instruction

TASKS = {
    "image_classification": setup_image_classification,
    "captioning": setup_captioning,
    "contrastive": setup_contrastive,
    "visual_instruction": setup_visual_instruction,
}
