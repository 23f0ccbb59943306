"""Image processing for DTP-ViT: transformers' CLIP image processor (PIL backend, no torchvision) at the model size."""

from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

OPENAI_CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def build_image_processor(image_size: int, image_mean=None, image_std=None) -> CLIPImageProcessorPil:
    """Resize the shortest edge to `image_size`, centre-crop a square, convert to RGB, rescale and normalise.

    Saved as `image_processor_type: CLIPImageProcessor`, so any transformers install loads it (the fast torchvision
    class where torchvision exists, the PIL class otherwise).
    """
    return CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=image_mean or OPENAI_CLIP_MEAN,
        image_std=image_std or OPENAI_CLIP_STD,
    )


__all__ = ["build_image_processor"]
