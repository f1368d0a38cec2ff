# Over 500 lines: ARDragPipeline is one class (load, condition, call, stream, save) that users read whole.
"""`ARDragPipeline`: image + trajectories (+ prompt) -> video, frame by frame, without Lightning.

An exported pipeline folder holds `transformer/` (diffusers `save_pretrained`: config.json + safetensors) and
`ardrag_pipeline.json` naming the codec, text encoder, schedule, cache window, chunk size and mode
(autoregressive student or bidirectional teacher). Loading never unpickles: safetensors and JSON only.

    pipe = ARDragPipeline.from_pretrained("runs/toy/export/rl")
    video = pipe(image, tracks, visible, prompt="a red square", seed=0)   # uint8 (T, H, W, 3)
    stream = pipe.stream(image, tracks, seed=0)
    first = next(stream)                         # frame 0 as soon as it is decoded
    frame = stream.send({"tracks": new_tracks})  # new drags apply from the next latent frame on
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from ardrag.codecs import Codec, build_codec
from ardrag.conditioning import (
    REFERENCE_FRAMES,
    Conditioner,
    cond_channels,
    image_to_tensor,
    video_to_uint8,
)
from ardrag.models.attention import CausalConfig
from ardrag.models.causal_wan import CausalWanTransformer
from ardrag.models.presets import preset_config
from ardrag.sampling import (
    Conditions,
    Denoiser,
    FlowSchedule,
    RolloutConfig,
    iter_rollout,
    randn,
    sample_bidirectional,
)
from ardrag.streaming import StreamEngine, fast_path_supported, sample_bidirectional_fast
from ardrag.text import TextEncoder, build_text_encoder
from ardrag.trajectory import TrajectoryLimits
from ardrag.video import atomic_write_bytes

CONFIG_NAME = "ardrag_pipeline.json"
FORMAT_VERSION = 1


@dataclass
class PipelineConfig:
    """Everything besides the transformer weights that defines generation (written to ardrag_pipeline.json)."""

    mode: str = "autoregressive"
    """'autoregressive' (frame-wise student with KV cache) or 'bidirectional' (teacher / initial model)."""
    height: int = 64
    """Generated video height, pixels (images and drags are rescaled to it)."""
    width: int = 64
    """Generated video width, pixels."""
    fps: float = 8.0
    """Frame rate written to output files."""
    codec: dict[str, Any] = field(default_factory=lambda: {"type": "pixel", "factor": 4})
    """`{"type": "pixel", "factor": 4}` (toy) or `{"type": "wan_vae", "path": LOCAL_DIR}` (full scale)."""
    text_encoder: dict[str, Any] = field(
        default_factory=lambda: {"type": "hash", "dim": 64, "max_length": 16}
    )
    timesteps: list[float] | None = field(default_factory=lambda: [1000.0, 755.0, 522.0])
    """Denoising timesteps per frame, used as given (the paper's); None: `num_steps` uniform, warped by `shift`."""
    num_steps: int = 3
    shift: float = 1.0
    chunk_size: int = 1
    """Latent frames generated together (1: AR-Drag; 3: the Self-Forcing-style baseline)."""
    cache_frames: int = 7
    """KV cache window in latent frames, sinks included (the paper's memory of 7 frames)."""
    sink_frames: int = 0
    """First frames kept in the cache forever (attention sink)."""
    context_timestep: float = 0.0
    """Timestep at which clean frames are written to the cache."""
    guidance_scale: float = 1.0
    """Classifier-free guidance on the text (1: off, as for a distilled student)."""
    negative_prompt: str = ""
    heatmap_sigma: float = 2.0
    """Gaussian blob sigma of the trajectory heatmaps, pixels of the generated video."""
    reference_frames: str = "first"
    """Where the reference-image latent goes in the condition channels: 'first' (latent frame 0 only, Wan I2V's
    layout) or 'all' (every latent frame: each token sees the reference patch at its own place; see Conditioner)."""
    motion_preview_radius: float = 0.0
    """> 0: add the motion-preview condition (the reference with a disc of this radius, pixels, around each drag's
    start moved along the drag; see `ardrag.conditioning.motion_preview`); 0: the paper's conditions only."""
    motion_preview_fill: float = 0.0
    """> 0, with the motion preview: the pixels within this multiple of `motion_preview_radius` around a moving drag's
    start that nothing covers get a smooth background estimate and are flagged in one more condition channel
    (see `ardrag.conditioning.motion_preview`); 0: they keep the reference, so dragged content shows at its start
    too."""
    max_tracks: int = 64
    """Most drags accepted (trajectory files with more are refused)."""
    max_frames: int = 1024
    """Most video frames accepted (bounded by the backbone's rope_max_seq_len in latent frames)."""
    compile: bool = False
    """Run the transformer forward through `torch.compile` with inductor's `freezing` and C++ wrapper (one graph
    per input shape for all layers together, weights as constants; see `ardrag.streaming`). The first run of each
    shape compiles (tens of seconds on a CPU): call `ARDragPipeline.warmup` before timing. Changing the weights
    rebuilds the graphs."""

    def __post_init__(self) -> None:
        if self.mode not in ("autoregressive", "bidirectional"):
            raise ValueError(f"mode must be 'autoregressive' or 'bidirectional', got {self.mode!r}")
        if self.reference_frames not in REFERENCE_FRAMES:
            raise ValueError(
                f"reference_frames must be one of {REFERENCE_FRAMES}, got {self.reference_frames!r}"
            )
        self.rollout()  # validates schedule and causal settings

    def schedule(self) -> FlowSchedule:
        return FlowSchedule(self.timesteps, self.num_steps, self.shift)

    def causal(self) -> CausalConfig:
        return CausalConfig(self.chunk_size, self.cache_frames, self.sink_frames)

    def rollout(self, use_kv_cache: bool = True) -> RolloutConfig:
        return RolloutConfig(
            schedule=self.schedule(),
            causal=self.causal(),
            context_timestep=self.context_timestep,
            guidance_scale=self.guidance_scale,
            use_kv_cache=use_kv_cache,
        )

    def limits(self) -> TrajectoryLimits:
        return TrajectoryLimits(max_frames=self.max_frames, max_tracks=self.max_tracks)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PipelineConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names - {"format", "version"}
        if unknown:
            raise ValueError(f"unknown keys in {CONFIG_NAME}: {sorted(unknown)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    @classmethod
    def load(cls, folder: str | Path) -> PipelineConfig:
        """Read only the JSON (cheap: used to validate user input before any model loads)."""
        path = Path(folder) / CONFIG_NAME
        if not path.exists():
            raise FileNotFoundError(f"{folder} is not an exported ardrag pipeline: {CONFIG_NAME} is missing")
        return cls.from_dict(json.loads(path.read_text()))


@dataclass
class _Prepared:
    conditions: Conditions
    noise: torch.Tensor
    num_frames: int  # video frames to return
    image_size: tuple[int, int]  # (W, H) of the caller's coordinate frame
    generator: torch.Generator  # continues after the noise draw: context noise (context_timestep > 0)
    reference: torch.Tensor  # (1, 3, H, W) in [-1, 1] at the model's size: drag updates recondition with it
    tracks: torch.Tensor  # (1, T', N, 2) model pixels: lazy conditions (conditions.cond None) come from them
    visible: torch.Tensor  # (1, T', N) bool
    cond_block: tuple | None = None  # lazy conditions built ahead: (tracks, start, stop, channels)


class ARDragPipeline:
    """Trajectory-controlled image-to-video generation with a frame-wise AR (or bidirectional) Wan backbone."""

    def __init__(
        self,
        transformer: CausalWanTransformer,
        codec: Codec,
        text_encoder: TextEncoder,
        config: PipelineConfig,
    ) -> None:
        self.transformer = transformer.eval()
        self.codec = codec.eval()
        self.text_encoder = text_encoder.eval()
        # record what was actually built (fills encoder defaults), so export -> load gives an equal config
        self.config = dataclasses.replace(
            config, codec=codec.describe(), text_encoder=text_encoder.describe()
        )
        self.fast = True
        """Generate with the inference engines of `ardrag.streaming` when they support the model (False: the
        training-side sampler, `sampling.iter_rollout` / `sample_bidirectional`; same videos to float rounding)."""
        self.conditioner = Conditioner(
            codec,
            config.heatmap_sigma,
            config.reference_frames,
            config.motion_preview_radius,
            config.motion_preview_fill,
        )
        codec.check_size(config.height, config.width, transformer.config.patch_size[1])
        want = self.conditioner.channels
        if transformer.config.cond_in_channels != want:
            raise ValueError(
                f"transformer has cond_in_channels={transformer.config.cond_in_channels}, the codec needs {want}"
            )

    # ------------------------------------------------------------------ construction / export
    @classmethod
    def from_preset(
        cls, preset: str = "toy", config: PipelineConfig | None = None, seed: int = 0, **model_overrides: Any
    ) -> ARDragPipeline:
        """A freshly initialised pipeline (the untrained 'initial model' at toy scale, or tests)."""
        config = config or PipelineConfig()
        codec = build_codec(config.codec)
        text = build_text_encoder(config.text_encoder)
        torch.manual_seed(seed)
        model_cfg = preset_config(
            preset,
            in_channels=codec.latent_channels,
            out_channels=codec.latent_channels,
            text_dim=text.dim,
            cond_in_channels=cond_channels(
                codec, config.motion_preview_radius > 0, config.motion_preview_fill > 0
            ),
            **model_overrides,
        )
        return cls(CausalWanTransformer(**model_cfg), codec, text, config)

    @classmethod
    def from_base(
        cls, transformer_path: str | Path, config: PipelineConfig, torch_dtype: torch.dtype | None = None
    ) -> ARDragPipeline:
        """The initial model at full scale: a diffusers-format Wan2.1 transformer folder (e.g. the `transformer/`
        of Wan2.1-T2V-1.3B-Diffusers) plus zero-initialised condition channels, so it behaves as the base model."""
        path = Path(transformer_path)
        if not (path / "config.json").exists():
            raise FileNotFoundError(
                f"no diffusers transformer at {path}: give the local 'transformer/' folder of a Wan2.1 checkpoint "
                "in diffusers format (config.json + safetensors); nothing is downloaded at run time"
            )
        codec = build_codec(config.codec)
        text = build_text_encoder(config.text_encoder)
        transformer = CausalWanTransformer.from_pretrained(str(path), torch_dtype=torch_dtype)
        if transformer.config.in_channels != codec.latent_channels:
            raise ValueError(
                f"transformer has in_channels={transformer.config.in_channels}, codec has {codec.latent_channels}"
            )
        if transformer.config.cond_in_channels == 0:
            transformer.add_condition_channels(
                cond_channels(codec, config.motion_preview_radius > 0, config.motion_preview_fill > 0)
            )
        return cls(transformer, codec, text, config)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        device: str | torch.device | None = None,
        torch_dtype: torch.dtype | None = None,
    ) -> ARDragPipeline:
        """Load an exported folder (transformer/ + ardrag_pipeline.json); relative encoder paths are inside it."""
        path = Path(path)
        config = PipelineConfig.load(path)
        if not (path / "transformer" / "config.json").exists():
            raise FileNotFoundError(f"{path}/transformer/ (diffusers save_pretrained folder) is missing")
        transformer = CausalWanTransformer.from_pretrained(str(path / "transformer"), torch_dtype=torch_dtype)
        pipe = cls(
            transformer,
            build_codec(config.codec, path),
            build_text_encoder(config.text_encoder, path),
            config,
        )
        return pipe.to(device) if device is not None else pipe

    def save_pretrained(self, path: str | Path) -> Path:
        path = Path(path)
        self.transformer.save_pretrained(str(path / "transformer"), safe_serialization=True)
        data = {"format": "ardrag-pipeline", "version": FORMAT_VERSION, **dataclasses.asdict(self.config)}
        data["codec"], data["text_encoder"] = self.codec.describe(), self.text_encoder.describe()
        atomic_write_bytes(path / CONFIG_NAME, (json.dumps(data, indent=2) + "\n").encode())
        return path

    def to(self, device: str | torch.device) -> ARDragPipeline:
        for m in (self.transformer, self.codec, self.text_encoder):
            m.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return self.transformer.patch_embedding.weight.device

    @property
    def height(self) -> int:
        return self.config.height

    @property
    def width(self) -> int:
        return self.config.width

    # ------------------------------------------------------------------ inputs
    def _model_tracks(
        self, tracks: np.ndarray, visible: np.ndarray | None, image_size: tuple[int, int], num_frames: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Caller tracks (T, N, 2) in image pixels -> (1, T', N, 2) in model pixels, padded to T' valid frames."""
        tr = np.asarray(tracks, dtype=np.float32)
        if tr.ndim != 3 or tr.shape[-1] != 2 or tr.shape[0] < 1 or tr.shape[1] < 1:
            raise ValueError(f"tracks must be (T, N, 2) with T, N >= 1, got {tr.shape}")
        if not np.isfinite(tr).all():
            raise ValueError("tracks contain NaN or infinite values")
        if tr.shape[1] > self.config.max_tracks:
            raise ValueError(f"{tr.shape[1]} tracks exceed the model's limit of {self.config.max_tracks}")
        vis = np.ones(tr.shape[:2], dtype=bool) if visible is None else np.asarray(visible, dtype=bool)
        if vis.shape != tr.shape[:2]:
            raise ValueError(f"visible must be (T, N) = {tr.shape[:2]}, got {vis.shape}")
        w, h = image_size
        tr = tr * np.array([self.width / w, self.height / h], dtype=np.float32)
        if len(tr) < num_frames:  # hold the last position/visibility for padding frames the codec needs
            pad = num_frames - len(tr)
            tr = np.concatenate([tr, np.repeat(tr[-1:], pad, 0)])
            vis = np.concatenate([vis, np.repeat(vis[-1:], pad, 0)])
        return torch.from_numpy(tr[None]).to(self.device), torch.from_numpy(vis[None]).to(self.device)

    def _valid_frames(self, t: int) -> int:
        """Smallest frame count >= t that the codec can represent (1 + 4k for the Wan VAE)."""
        f = self.codec.temporal_factor
        return t if f == 1 else 1 + f * -(-(t - 1) // f)

    @torch.no_grad()
    def _prepare(
        self,
        image: np.ndarray,
        tracks: np.ndarray,
        visible: np.ndarray | None,
        prompt: str,
        negative_prompt: str | None,
        seed: int,
        lazy: bool = False,
    ) -> _Prepared:
        """Validated inputs, text context and noise; the condition channels of every frame unless `lazy` (then
        `conditions.cond` is None and `_cond_frames` builds each chunk's when it starts)."""
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"image must be uint8 (H, W, 3) RGB, got {image.dtype} {image.shape}")
        t = int(np.asarray(tracks).shape[0]) if np.asarray(tracks).ndim == 3 else 0
        if t > self.config.max_frames:
            raise ValueError(f"{t} frames exceed the model's limit of {self.config.max_frames}")
        size = (image.shape[1], image.shape[0])
        t_valid = self._valid_frames(max(t, 1))
        tr, vis = self._model_tracks(tracks, visible, size, t_valid)
        ref = image
        if size != (self.width, self.height):
            ref = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        ref_t = image_to_tensor(ref)[None].to(self.device)
        cond = None if lazy else self.conditioner(ref_t, tr, vis)
        neg = self.config.negative_prompt if negative_prompt is None else negative_prompt
        ctx = self.text_encoder.encode([prompt]).to(self.device)
        neg_ctx = (
            self.text_encoder.encode([neg]).to(self.device) if self.config.guidance_scale != 1.0 else None
        )
        f = self.codec.num_latent_frames(t_valid)
        h, w = self.height // self.codec.spatial_factor, self.width // self.codec.spatial_factor
        g = torch.Generator().manual_seed(int(seed))
        noise = randn((1, self.codec.latent_channels, f, h, w), g, self.device)
        return _Prepared(Conditions(ctx, cond, neg_ctx), noise, t, size, g, ref_t, tr, vis)

    COND_BLOCK = 8
    """Latent frames whose lazy conditions are built together after the first chunk (each call also builds frame 0
    and one frame per drag: `Conditioner.frames`); the first chunk's are built alone, for the first frame."""

    def _cond_frames(self, prep: _Prepared, start: int, stop: int) -> torch.Tensor:
        """Condition channels of latent frames [start, stop) (from `prep.conditions.cond` when computed)."""
        if prep.conditions.cond is not None:
            return prep.conditions.cond[:, :, start:stop]
        blk = prep.cond_block
        if blk is None or blk[0] is not prep.tracks or not blk[1] <= start < stop <= blk[2]:
            end = stop if start == 0 else min(max(stop, start + self.COND_BLOCK), prep.tracks.shape[1])
            chans = self.conditioner.frames(prep.reference, prep.tracks, prep.visible, start, end)
            blk = prep.cond_block = (prep.tracks, start, end, chans)
        return blk[3][:, :, start - blk[1] : stop - blk[1]]

    def _use_engine(self, use_kv_cache: bool = True) -> bool:
        return self.fast and use_kv_cache and fast_path_supported(self.transformer) is None

    def _engine(self, prep: _Prepared) -> StreamEngine:
        return StreamEngine(
            self.transformer, prep.conditions, self.config.rollout(), compile=self.config.compile
        )

    @torch.no_grad()
    def warmup(self, num_frames: int | None = None) -> float:
        """Run one throw-away generation so that every shape a stream needs is built (compiled with
        `config.compile`; allocator and kernel choice otherwise) and return its seconds. num_frames: video frames
        (default: enough for every shape of an AR stream, 2 chunks and a partial one; the teacher's graphs depend on
        the clip length, so give its length)."""
        import time

        c = self.config.chunk_size
        t = num_frames or (2 * c + 1 if c > 1 else 3)
        image = np.zeros((self.height, self.width, 3), dtype=np.uint8)
        tracks = np.linspace([1.0, 1.0], [self.width - 2.0, self.height - 2.0], t, dtype=np.float32)[:, None]
        t0 = time.perf_counter()
        for _ in self.stream(image, tracks):
            pass
        return time.perf_counter() - t0

    # ------------------------------------------------------------------ generation
    @torch.no_grad()
    def __call__(
        self,
        image: np.ndarray,
        tracks: np.ndarray,
        visible: np.ndarray | None = None,
        prompt: str = "",
        seed: int = 0,
        negative_prompt: str | None = None,
        use_kv_cache: bool = True,
    ) -> np.ndarray:
        """Generate a video following `tracks` (T, N, 2) given in pixels of `image` (H, W, 3) uint8.

        Returns uint8 (T, height, width, 3) at the model's resolution. `use_kv_cache=False` recomputes the context
        with the masked full-sequence forward at every step (a slow reference that must give the same video).
        """
        prep = self._prepare(image, tracks, visible, prompt, negative_prompt, seed)
        latents = self._sample(prep, use_kv_cache)
        video = self.codec.decode(latents)[0]
        return video_to_uint8(video[:, : prep.num_frames])

    def _sample(self, prep: _Prepared, use_kv_cache: bool) -> torch.Tensor:
        if self._use_engine(use_kv_cache or self.config.mode == "bidirectional"):
            if self.config.mode == "bidirectional":
                if prep.conditions.cond is None:
                    prep.conditions.cond = self.conditioner(prep.reference, prep.tracks, prep.visible)
                return sample_bidirectional_fast(
                    self.transformer,
                    prep.conditions,
                    prep.noise,
                    self.config.schedule(),
                    self.config.guidance_scale,
                    compile=self.config.compile,
                )
            cond = lambda a, b: self._cond_frames(prep, a, b)  # noqa: E731
            return torch.cat(list(self._engine(prep).run(prep.noise, cond, prep.generator)), dim=2)
        if prep.conditions.cond is None:
            prep.conditions.cond = self.conditioner(prep.reference, prep.tracks, prep.visible)
        den = Denoiser(self.transformer, prep.conditions, self.config.guidance_scale)
        if self.config.mode == "bidirectional":
            return sample_bidirectional(den, prep.noise, self.config.schedule())
        chunks = iter_rollout(den, prep.noise, self.config.rollout(use_kv_cache), generator=prep.generator)
        return torch.cat([c.clean for c in chunks], dim=2)

    @torch.no_grad()
    def stream(
        self,
        image: np.ndarray,
        tracks: np.ndarray,
        visible: np.ndarray | None = None,
        prompt: str = "",
        seed: int = 0,
        negative_prompt: str | None = None,
        use_kv_cache: bool = True,
    ) -> Generator[np.ndarray, dict | None, None]:
        """Yield uint8 (H, W, 3) frames as soon as each latent frame is denoised and decoded.

        Send `{"tracks": (T, N', 2), "visible": (T, N') or None}` (same T, image pixels) to change the drags: the
        new trajectory conditions every latent frame not yet started; frames already yielded stay as they are.
        """
        engine = self.config.mode == "autoregressive" and self._use_engine(use_kv_cache)
        prep = self._prepare(image, tracks, visible, prompt, negative_prompt, seed, lazy=engine)
        decode = self.codec.stream_decoder()
        if self.config.mode == "bidirectional":
            frames = video_to_uint8(decode(self._sample(prep, use_kv_cache))[0])
            for i in range(prep.num_frames):
                if (yield frames[i]) is not None:
                    raise ValueError(
                        "a bidirectional model generates all frames at once: it cannot take updates"
                    )
            return

        pending: list[dict] = []

        def apply_updates(start: int) -> None:
            while pending:
                upd = pending.pop(0)
                new_tracks = np.asarray(upd["tracks"], dtype=np.float32)
                if new_tracks.ndim != 3 or new_tracks.shape[0] != prep.num_frames:
                    raise ValueError(
                        f"updated tracks must be (T={prep.num_frames}, N, 2), got {new_tracks.shape}"
                    )
                t_valid = self._valid_frames(len(new_tracks))
                tr, vis = self._model_tracks(new_tracks, upd.get("visible"), prep.image_size, t_valid)
                if engine:  # lazy conditions: the frames from `start` on are built from the new drags
                    prep.tracks, prep.visible = tr, vis
                    continue
                new = self.conditioner(prep.reference, tr, vis)  # same reference, new drag channels
                prep.conditions.cond = torch.cat(
                    [prep.conditions.cond[:, :, :start], new[:, :, start:]], dim=2
                )

        if engine:
            chunks = self._engine(prep).run(
                prep.noise,
                lambda a, b: self._cond_frames(prep, a, b),
                prep.generator,
                on_chunk_start=apply_updates,
            )
        else:
            den = Denoiser(self.transformer, prep.conditions, self.config.guidance_scale)
            chunks = (
                ch.clean
                for ch in iter_rollout(
                    den,
                    prep.noise,
                    self.config.rollout(use_kv_cache),
                    generator=prep.generator,
                    on_chunk_start=apply_updates,
                )
            )
        emitted = 0
        for clean in chunks:
            frames = video_to_uint8(decode(clean)[0])
            for frame in frames:
                if emitted >= prep.num_frames:
                    return
                emitted += 1
                update = yield frame
                if update is not None:
                    pending.append(update)
