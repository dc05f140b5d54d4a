"""source -> UniversalVectorProcessor -> windows: the data pipeline in one call.

    data = prepare_data(DataConfig(dataset_name="recordings/"), ModelInputs.of_policy(policy))
    loader = make_loader(data.dataset(batch_size=32), num_workers=2)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from ..actions.layout import ActionLayout
from ..model.checkpoint import EXTRA_KEY, parse_config, read_checkpoint
from ..model.presets import PRESETS, preset_config
from ..model.vision import ImagePreprocessor, resolve_tower_config
from ..policy import checkpoint_layout
from ..actions.processor import UniversalVectorProcessor
from .config import DataConfig
from .episodes import DatasetIndex, build_index
from .images import Augmentation, FrameTransform, ImageDecodeError, decode_image
from .loader import WindowDataset
from .sources import open_sources
from .windows import WindowSpec


@dataclass(frozen=True)
class ModelInputs:
    """What the checkpoint decides about the data: its action layout, chunk and frame size (and
    the image fit a fine-tune recorded)."""

    layout: ActionLayout
    horizon: int
    action_shift: int
    image_size: int
    image_fit: Optional[str] = None

    @classmethod
    def of_config(cls, config, extra: dict, layout: ActionLayout, image_size: int) -> "ModelInputs":
        """A fine-tune records the alignment it was trained with (it may be 0, which the official
        modality config cannot hold); otherwise the checkpoint's ``action_shift`` applies."""
        shift = extra.get("data_action_shift", config.modality_cfg.action_shift)
        return cls(layout, config.model_cfg.action_horizon, shift, image_size, extra.get("image_fit"))

    @classmethod
    def of_policy(cls, policy) -> "ModelInputs":
        return cls.of_config(policy.config, policy.extra, policy.layout, policy.preprocessor.size)

    @classmethod
    def of_checkpoint(cls, path: Optional[str] = None, trust_pickle: bool = False) -> "ModelInputs":
        """From a checkpoint's config and tensor shapes (memory-mapped, no model is built), or a
        preset's (as ``train --base`` takes one); without a path, the released NitroGen's."""
        if path is None or path in PRESETS:
            raw, extra, state_dict = preset_config(path or "released"), {}, None
        else:
            ckpt = read_checkpoint(path, trust_pickle)
            raw, extra, state_dict = ckpt["ckpt_config"], ckpt.get(EXTRA_KEY) or {}, ckpt["model"]
        cfg = parse_config(raw, f"{path}: ckpt_config")
        tower = resolve_tower_config(cfg.model_cfg.vision_encoder_name, state_dict, extra.get("vision_tower"))
        size = ImagePreprocessor.for_tower(cfg.model_cfg.vision_encoder_name, tower).size
        return cls.of_config(cfg, extra, checkpoint_layout(cfg, extra), size)


@dataclass
class PreparedData:
    config: DataConfig
    index: DatasetIndex
    spec: WindowSpec
    transform: FrameTransform

    def dataset(
        self,
        batch_size: int,
        episodes: Optional[Sequence[int]] = None,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        train: bool = True,
        drop_last: bool = True,
        step_windows: Optional[int] = None,
    ) -> WindowDataset:
        """Batches of windows of the chosen episodes. Augmentation (when configured) only with
        ``train``; without it (validation) the split over processes is always by window, so every
        process runs the same number of batches."""
        transform = self.transform
        if not train and transform.augmentation is not None:
            transform = FrameTransform(transform.size, transform.fit)
        return WindowDataset(
            self.index, self.spec, transform, batch_size, episodes=episodes, shuffle=shuffle, seed=seed,
            shuffle_buffer=self.config.shuffle_buffer, skip_bad_rows=self.config.skip_bad_rows,
            rank=rank, world_size=world_size, shard=self.config.shard if train else "windows", drop_last=drop_last,
            step_windows=step_windows,
        )

    def frame_size(self) -> Optional[tuple[int, int]]:
        """Width and height of the first episode's first frame; None when there is none or it does
        not decode (the loader reports a bad frame where it reads it)."""
        if not self.index.episodes:
            return None
        episode = self.index.episodes[0]
        source, column = self.index.sources[episode.source], self.index.image_columns[episode.source]
        try:
            return decode_image(source.read_value(column, int(episode.rows[0])), source.base_dir).size
        except ImageDecodeError:
            return None


def prepare_data(config: DataConfig, model: ModelInputs) -> PreparedData:
    """Open the sources, convert their actions to the checkpoint's layout, index the windows."""
    processor = UniversalVectorProcessor(
        model.layout,
        profile=config.profile,
        mapping=config.mapping or None,
        stick_range=config.stick_range,
        analog_deadzone=config.analog_deadzone,
        trigger_threshold=config.trigger_threshold,
    )
    index = build_index(
        open_sources(config.dataset_name, config.split),
        processor,
        image_column=config.image_column,
        episode_column=config.episode_column,
        frame_column=config.frame_column,
        skip_bad_rows=config.skip_bad_rows,
    )
    spec = WindowSpec(
        horizon=config.prediction_horizon or model.horizon,
        action_shift=model.action_shift if config.action_shift is None else config.action_shift,
        layout=model.layout,
    )
    augmentation = Augmentation(config.augment_crop_scale, config.augment_jitter) if config.augment else None
    return PreparedData(config, index, spec, FrameTransform(model.image_size, config.image_fit, augmentation))
