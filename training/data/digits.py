"""scikit-learn's handwritten digits as an image classification dataset (the built-in DTP-ViT data)."""

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, Image as ImageFeature
from PIL import Image

DIGIT_UPSCALE = 4  # scikit-learn's digits are 8x8; stored as 32x32 images


def digits_dataset(test_fraction: float = 0.2, seed: int = 0) -> DatasetDict:
    """scikit-learn's 1,797 handwritten digits as 32x32 grayscale images, split deterministically (stratified)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    pixels = (digits.images * (255.0 / 16.0)).round().astype(np.uint8)
    images = [Image.fromarray(p).resize((8 * DIGIT_UPSCALE,) * 2, Image.BICUBIC) for p in pixels]
    indices = np.arange(len(images))
    train_idx, test_idx = train_test_split(
        indices, test_size=test_fraction, random_state=seed, stratify=digits.target
    )
    names = [str(i) for i in range(10)]

    def subset(idx):
        data = {"image": [images[i] for i in idx], "label": [int(digits.target[i]) for i in idx]}
        return Dataset.from_dict(data).cast_column("image", ImageFeature()).cast_column(
            "label", ClassLabel(names=names)
        )

    return DatasetDict(train=subset(sorted(train_idx)), test=subset(sorted(test_idx)))
