"""What the composite configs (an image tower and a text model as sub-configs) share."""


class FullSubConfigsMixin:
    """`to_diff_dict` that keeps `vision_config` and `text_config` whole (without their local `_name_or_path`), so a
    saved config.json rebuilds the same towers whatever the sub-config classes' defaults become. Put it before
    `PreTrainedConfig` in the bases."""

    def to_diff_dict(self) -> dict:
        diff = super().to_diff_dict()
        full = self.to_dict()
        for key in ("vision_config", "text_config"):
            diff[key] = {k: v for k, v in full[key].items() if k != "_name_or_path"}
        return diff
