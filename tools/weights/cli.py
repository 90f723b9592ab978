"""`infinitetalk weights ...`: fetch, verify, manifest, repack, upload-volume, make-tiny, isolation.

`main(argv)` returns an exit status: 0 success, 1 a check failed (verify found problems), 2 bad usage
or an operation that could not complete (its reason on stderr).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tools.weights.manifest import MANIFEST_NAME

DTYPE_ALIASES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp8": "float8_e4m3fn", "float8_e4m3fn": "float8_e4m3fn"}


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _lora(spec: str):
    from tools.weights.repack import LoraSpec

    path, _, strength = spec.partition(":")
    return LoraSpec(Path(path), float(strength) if strength else 1.0)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="infinitetalk weights", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fetch", help="download a model variant's files (conf/model/<variant>.yaml) from the Hub")
    f.add_argument("--model", required=True, help="model variant, e.g. infinitetalk_single")
    f.add_argument("--dest", required=True, type=Path, help="volume root (files land under <dest>/weights/...)")
    f.add_argument("--token-env", default="HF_TOKEN", help="environment variable holding the Hub token")
    f.add_argument("--endpoint", default=None, help="Hub endpoint (default: huggingface_hub's, HF_ENDPOINT)")
    f.add_argument("--max-workers", type=int, default=8)
    f.add_argument("--dry-run", action="store_true", help="print the plan only")

    v = sub.add_parser("verify", help="check a folder against its manifest; names missing or truncated files")
    v.add_argument("root", type=Path)
    v.add_argument("--manifest", type=Path, default=None, help=f"default: <root>/{MANIFEST_NAME}")
    v.add_argument("--sizes-only", action="store_true", help="skip the sha256 pass")

    m = sub.add_parser("manifest", help=f"write <root>/{MANIFEST_NAME} for the files under root")
    m.add_argument("root", type=Path)
    m.add_argument("--no-hashes", action="store_true")

    r = sub.add_parser("repack", help="merge base shards + adapter (+ LoRAs) into one bf16 or fp8 bundle")
    r.add_argument("--ckpt-dir", type=Path, help="the Wan2.1-I2V-14B-480P folder")
    r.add_argument("--adapter", type=Path, help="InfiniteTalk's single/ or multi/infinitetalk.safetensors")
    r.add_argument("--model", help="instead of --ckpt-dir/--adapter: the variant's paths under --root, from conf/")
    r.add_argument("--root", type=Path, help="the volume root that `fetch --dest` filled (with --model)")
    r.add_argument("--lora", action="append", default=[], metavar="PATH[:STRENGTH]", help="merge a LoRA (repeatable)")
    r.add_argument("--dtype", choices=sorted(DTYPE_ALIASES), default="bf16")
    r.add_argument("--out", type=Path, required=True)

    u = sub.add_parser("upload-volume", help="upload a folder to a Runpod network volume (S3-compatible API)")
    u.add_argument("src", type=Path)
    u.add_argument("--volume-id", required=True, help="the network volume id (the S3 bucket)")
    where = u.add_mutually_exclusive_group(required=True)
    where.add_argument("--datacenter", help="e.g. EU-RO-1 (endpoint https://s3api-<dc>.runpod.io)")
    where.add_argument("--endpoint", help="explicit S3 endpoint URL")
    u.add_argument("--region", default=None, help="default: the datacenter id")
    u.add_argument("--prefix", default="", help="key prefix on the volume, e.g. weights")
    u.add_argument("--part-size-mib", type=float, default=128.0)
    u.add_argument("--concurrency", type=int, default=4)

    t = sub.add_parser("make-tiny", help="write the tiny model in the published layouts (+ manifest)")
    t.add_argument("dest", type=Path)

    i = sub.add_parser("isolation", help="convert the published htdemucs .th (audio_isolation) to safetensors")
    i.add_argument("--src", required=True, type=Path, help="the released file, e.g. 955717e8-8726e21a.th")
    i.add_argument("--out", required=True, type=Path,
                   help="e.g. <volume>/weights/htdemucs/htdemucs.safetensors (model.isolation_path)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _run(args)
    except (OSError, ValueError) as exc:
        _say(f"error: {exc}")
        return 2
    except Exception as exc:  # RepackError, WeightLoadError, botocore and Hub errors: reason, not a trace
        _say(f"error: {type(exc).__name__}: {exc}")
        return 2


def _run(args: argparse.Namespace) -> int:
    if args.cmd == "fetch":
        from tools.weights.fetch import fetch, plan

        sources = plan(args.model, args.dest)
        for s in sources:
            _say(f"{s.repo}@{s.revision or 'main'} -> {s.local_dir}: {', '.join(s.files)}")
        if args.dry_run or not sources:
            return 0
        manifest = fetch(
            sources,
            args.dest,
            token=os.environ.get(args.token_env) or None,
            endpoint=args.endpoint,
            max_workers=args.max_workers,
            progress=_say,
        )
        _say(f"{len(manifest.files)} files, {manifest.total_size() / 1e9:.2f} GB under {args.dest}")
        return 0

    if args.cmd == "verify":
        from tools.weights.verify import verify

        problems = verify(args.root, args.manifest, hashes=not args.sizes_only, progress=_say)
        for problem in problems:
            print(problem)
        if problems:
            _say(f"{len(problems)} problem(s) under {args.root}")
            return 1
        _say(f"{args.root}: all files match the manifest")
        return 0

    if args.cmd == "manifest":
        from tools.weights.manifest import build_manifest

        path = build_manifest(args.root, hashes=not args.no_hashes).save(args.root / MANIFEST_NAME)
        _say(f"wrote {path}")
        return 0

    if args.cmd == "repack":
        from worker.engine.formats.layout import CheckpointLayout
        from tools.weights.repack import repack

        if args.model:
            if not args.root:
                raise ValueError("--model needs --root")
            from tools.weights.fetch import model_paths

            ckpt_dir, adapter = model_paths(args.model, args.root)
        elif args.ckpt_dir and args.adapter:
            ckpt_dir, adapter = args.ckpt_dir, args.adapter
        else:
            raise ValueError("give --ckpt-dir and --adapter, or --model and --root")
        layout = CheckpointLayout(ckpt_dir=ckpt_dir, infinitetalk_file=adapter, wav2vec_dir=ckpt_dir)
        result = repack(
            layout.dit_files,
            args.out,
            dtype=DTYPE_ALIASES[args.dtype],
            loras=[_lora(s) for s in args.lora],
            config_file=layout.dit_config,
            progress=_say,
        )
        _say(
            f"wrote {result.path}: {result.tensors} tensors ({result.quantized} fp8), "
            f"{result.size / 1e9:.3f} GB from {result.source_bytes / 1e9:.3f} GB"
        )
        return 0

    if args.cmd == "upload-volume":
        from tools.weights.upload_volume import make_client, runpod_endpoint, upload_volume

        endpoint = args.endpoint or runpod_endpoint(args.datacenter)
        client = make_client(endpoint, region=args.region or args.datacenter)
        report = upload_volume(
            args.src,
            args.volume_id,
            client=client,
            prefix=args.prefix,
            part_size=int(args.part_size_mib * 2**20),
            concurrency=args.concurrency,
            progress=_say,
        )
        _say(f"{len(report.files)} files, {report.bytes_sent / 1e9:.3f} GB sent")
        return 0

    if args.cmd == "make-tiny":
        from testkit.tiny import ensure_tiny_checkpoint
        from tools.weights.manifest import build_manifest

        layout = ensure_tiny_checkpoint(args.dest)
        build_manifest(args.dest).save(args.dest / MANIFEST_NAME)
        _say(f"tiny checkpoint at {layout.ckpt_dir}")
        return 0

    if args.cmd == "isolation":
        # the pickle is read with a restricted unpickler (nothing it names is imported or run), checked against
        # the network's keys and shapes, and written as safetensors, the only format the worker reads
        from worker.engine.formats.demucs_checkpoint import convert_htdemucs

        result = convert_htdemucs(args.src, args.out)
        _say(f"wrote {result.path}: {result.tensors} tensors, {result.parameters / 1e6:.1f}M parameters")
        return 0
    raise AssertionError(args.cmd)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
