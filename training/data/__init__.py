"""Data for training and evaluation: dataset loading and splits (`loading`), the built-in sets (`digits`, `shapes`),
caption and image-text datasets (`captioning`, `image_text`), LLaVA-format conversations (`conversations`) and the
shapes visual question answering set (`shapes_vqa`), batch collators and the tokenizers of models trained
from scratch."""
