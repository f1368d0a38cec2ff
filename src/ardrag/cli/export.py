"""`ardrag-export`: write an exported pipeline folder (transformer/ + ardrag_pipeline.json).

ardrag-export --pipeline-config configs/pipeline/toy.json --preset toy --out runs/toy/export/initial
    the untrained toy model (the "initial model" row at toy scale), seeded;
ardrag-export --pipeline-config configs/pipeline/wan2.1-1.3b.json --base /path/to/Wan2.1-T2V-1.3B-Diffusers/transformer --out DIR
    the base Wan2.1 transformer with zero-initialised condition channels (the paper's "initial model").
ardrag-export --ckpt runs/toy/teacher/checkpoints/last.ckpt --out DIR
    a training run's checkpoint (e.g. of a run that was stopped; finished runs export to <root>/export).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="ardrag-export", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--pipeline-config",
        "--pipeline_config",
        dest="pipeline_config",
        help="JSON with PipelineConfig fields (configs/pipeline/)",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--preset", help="freshly initialised backbone of this size preset (toy, tiny, wan2.1-1.3b)"
    )
    src.add_argument("--base", help="local diffusers-format Wan2.1 transformer folder")
    src.add_argument("--ckpt", help="Lightning checkpoint of an ardrag-fit run (its tb/config.yaml is read)")
    p.add_argument(
        "--run-config", "--run_config", dest="run_config", help="with --ckpt: the run's config.yaml"
    )
    p.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default=None,
        help="with --ckpt: store the transformer weights in this dtype (bfloat16 halves the folder)",
    )
    p.add_argument(
        "--mode", choices=["autoregressive", "bidirectional"], default=None, help="override the mode"
    )
    p.add_argument("--seed", type=int, default=0, help="initialisation seed for --preset")
    p.add_argument("--out", required=True, help="folder to write (transformer/ + ardrag_pipeline.json)")
    args = p.parse_args(argv)

    if args.ckpt:
        try:
            import torch

            from ardrag.training.base import export_checkpoint

            dtype = getattr(torch, args.dtype) if args.dtype else None
            out = export_checkpoint(args.ckpt, args.out, args.run_config, dtype)
        except (OSError, ValueError, KeyError, RuntimeError) as e:
            print(
                f"ardrag-export: error: {str(e).splitlines()[0] if str(e) else type(e).__name__}",
                file=sys.stderr,
            )
            return 2
        print(f"exported {args.ckpt} to {out}")
        return 0
    if not args.pipeline_config:
        p.error("--pipeline-config is required with --preset or --base")

    from ardrag.pipeline import ARDragPipeline, PipelineConfig

    try:
        cfg_dict = json.loads(Path(args.pipeline_config).read_text())
        if args.mode:
            cfg_dict["mode"] = args.mode
        config = PipelineConfig.from_dict(cfg_dict)
        if args.preset:
            pipe = ARDragPipeline.from_preset(args.preset, config, seed=args.seed)
        else:
            pipe = ARDragPipeline.from_base(args.base, config)
    except (OSError, ValueError) as e:
        print(f"ardrag-export: error: {e}", file=sys.stderr)
        return 2
    out = pipe.save_pretrained(args.out)
    n = sum(p.numel() for p in pipe.transformer.parameters())
    print(f"exported {pipe.config.mode} pipeline ({n:,} parameters) to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
