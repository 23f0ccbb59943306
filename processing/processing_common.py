"""Input checks shared by the processors (exported bundles carry this file next to the processor files)."""

import logging

logger = logging.getLogger(__name__)


def check_images(images) -> None:
    """Rejects an empty list of images (the image processor would silently return an empty batch)."""
    if isinstance(images, (list, tuple)) and len(images) == 0:
        raise ValueError("`images` is an empty list: pass at least one image.")


def warn_if_truncated(tokenizer, texts: list[str], limit: int | None) -> None:
    """Logs a warning when a text is longer than `limit` tokens, so that truncation is never silent."""
    if not limit or max(len(text.encode()) for text in texts) + 2 <= limit:  # every token covers a byte or more
        return
    longest = max(len(ids) for ids in tokenizer(texts)["input_ids"])
    if longest > limit:
        logger.warning("a text of %d tokens is truncated to the %d-token limit", longest, limit)


__all__ = ["check_images", "warn_if_truncated"]
