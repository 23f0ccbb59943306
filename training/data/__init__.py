"""Data for training and evaluation: dataset loading and splits (`loading`), the built-in sets (`digits`, `shapes`),
caption and image-text datasets (`captioning`, `image_text`), batch collators and the tokenizers of models trained
from scratch."""
