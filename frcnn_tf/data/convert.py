"""dataset_convert: KITTI images + labels -> TLT-compatible sharded TFRecords.

Frames are scanned (image decoded, labels parsed) in parallel, partitioned into
folds, split into shards and the shards written in parallel. Every shard is
written under a temporary name and renamed only when all of them succeeded.
"""
import collections
import concurrent.futures
import contextlib
import dataclasses
import glob
import json
import os
import random
import time

import tensorflow as tf
from absl import logging
from PIL import Image
from tqdm import tqdm

from frcnn_tf.data import kitti, records
from frcnn_tf.data.pipeline import DECODABLE_FORMATS
from frcnn_tf.errors import FrcnnError
from frcnn_tf.io_utils import atomic_output, remove_stale_temporaries
from frcnn_tf.spec import load_conversion_spec


@dataclasses.dataclass
class Frame:
    """One usable image with its objects; `frame_id` is `<image_dir_name>/<stem>` as in TLT."""

    stem: str
    frame_id: str
    image_path: str
    width: int
    height: int
    image_format: str
    objects: list


def shard_path(prefix, fold, num_folds, shard, num_shards):
    """TLT's shard name: <prefix>[-fold-FFF-of-NNN][-shard-SSSSS-of-MMMMM]."""
    name = prefix
    if num_folds:
        name += f"-fold-{fold:03d}-of-{num_folds:03d}"
    if num_shards:
        name += f"-shard-{shard:05d}-of-{num_shards:05d}"
    return name


def _list_frames(kitti_config):
    """Pairs image and label files by stem; reports unpaired files."""
    root = kitti_config.root_directory_path
    image_dir = os.path.join(root, kitti_config.image_dir_name)
    label_dir = os.path.join(root, kitti_config.label_dir_name)
    for folder in (image_dir, label_dir):
        if not os.path.isdir(folder):
            raise FrcnnError(f"{folder}: directory not found; check kitti_config.root_directory_path and "
                             "image_dir_name/label_dir_name")
    extension = kitti_config.image_extension
    images = {name[: -len(extension)]: os.path.join(image_dir, name)
              for name in os.listdir(image_dir) if name.endswith(extension)}
    labels = {name[:-4]: os.path.join(label_dir, name) for name in os.listdir(label_dir) if name.endswith(".txt")}
    problems = [kitti.Problem(images[s], 0, "image has no label file; skipped") for s in sorted(images.keys() - labels)]
    problems += [kitti.Problem(labels[s], 0, f"label file has no image *{extension}; skipped")
                 for s in sorted(labels.keys() - images)]
    pairs = [(stem, images[stem], labels[stem]) for stem in sorted(images.keys() & labels)]
    return pairs, problems


def _scan(job):
    """Decodes one image fully (catches truncated files) and reads its labels."""
    stem, image_path, label_path, image_dir_name, clip = job
    try:
        with Image.open(image_path) as image:
            image.load()
            width, height, image_format = image.width, image.height, (image.format or "").lower()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return None, [kitti.Problem(image_path, 0, f"unreadable image ({err}); skipped")], {}
    if image_format not in DECODABLE_FORMATS:
        return None, [kitti.Problem(image_path, 0, f"{image_format.upper() or 'unknown'} image, which training "
                                                   "cannot decode; save it as JPEG or PNG; skipped")], {}
    objects, problems = kitti.read_label_file(label_path, width, height, clip=clip)
    if objects is None:
        return None, problems, {}
    class_map = {o.label_class: o.object_class for o in objects}
    frame = Frame(stem, f"{image_dir_name}/{stem}", image_path, width, height, image_format, objects)
    return frame, problems, class_map


def _map(function, jobs, workers, description, unit):
    """Ordered results of function over jobs on `workers` threads, with a progress bar.

    Threads suffice: image decoding (PIL) and record writing (TensorFlow) release
    the GIL, and threads avoid a TensorFlow import per worker process.
    """
    bar = tqdm(total=len(jobs), desc=description, unit=unit, disable=None)
    results = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for result in pool.map(function, jobs):
            results.append(result)
            bar.update(1)
    bar.close()
    return results


def _partition(frames, kitti_config, seed):
    """Folds of frames. Random mode: fold 0 (validation) holds floor(N * val_split / 100) frames."""
    if kitti_config.partition_mode == "random":
        order = sorted(frames, key=lambda f: f.stem)
        random.Random(seed).shuffle(order)
        num_val = int(len(order) * kitti_config.val_split / 100)
        return [order[:num_val], order[num_val:]]
    path = os.path.join(kitti_config.root_directory_path, kitti_config.kitti_sequence_to_frames_file)
    try:
        with open(path, encoding="utf-8") as handle:
            sequences = json.load(handle)
    except (OSError, ValueError) as err:
        raise FrcnnError(f"{path}: cannot read the sequence-to-frames JSON ({err})") from None
    if not isinstance(sequences, dict) or not all(isinstance(v, list) for v in sequences.values()):
        raise FrcnnError(f"{path}: expected a JSON object mapping each sequence to a list of frame ids")
    by_stem = {f.stem: f for f in frames}
    num_folds = max(kitti_config.num_partitions, 1)
    folds = [[] for _ in range(num_folds)]
    ordered = sorted(sequences.items(), key=lambda item: (-len(item[1]), item[0]))
    for index, (_, stems) in enumerate(ordered):
        folds[index % num_folds].extend(by_stem[str(s)] for s in stems if str(s) in by_stem)
    return folds[::-1]  # TLT reverses the round-robin buckets


def _split(items, parts):
    """`parts` contiguous slices whose sizes differ by at most one."""
    size, extra = divmod(len(items), parts)
    bounds = [i * size + min(i, extra) for i in range(parts + 1)]
    return [items[bounds[i]:bounds[i + 1]] for i in range(parts)]


def _write_shard(job):
    """Writes one shard to its temporary path; returns the number of records."""
    temp_path, frames, embed = job
    with tf.io.TFRecordWriter(temp_path) as writer:
        for frame in frames:
            encoded = None
            if embed:
                with open(frame.image_path, "rb") as handle:
                    encoded = handle.read()
            example = records.make_example(frame.frame_id, frame.width, frame.height, frame.objects,
                                           encoded, frame.image_format if embed else None)
            writer.write(example.SerializeToString(deterministic=True))  # map order fixed
    return len(frames)


def _existing_outputs(prefix):
    found = glob.glob(glob.escape(prefix) + "-fold-*") + glob.glob(glob.escape(prefix) + "-shard-*")
    found += [p for p in (prefix, prefix + "_summary.json", prefix + "_warnings.json") if os.path.exists(p)]
    return sorted(found)


def convert(conversion_spec, output_prefix, workers=None, embed_images=False, clip_boxes=True,
            strict=False, overwrite=False, seed=42):
    """Converts the KITTI dataset of a validated DatasetExportConfig; returns the summary dict.

    strict: any input problem aborts before anything is written (else problems are
    reported and the offending line/object/image skipped, or boxes clipped).
    """
    if conversion_spec.WhichOneof("convert_config_type") != "kitti_config":
        raise FrcnnError("only kitti_config conversion is supported; convert COCO data to KITTI layout first")
    kitti_config = conversion_spec.kitti_config
    workers = workers or os.cpu_count() or 1
    if output_prefix.endswith(("/", os.sep)) or os.path.isdir(output_prefix):
        raise FrcnnError(f"{output_prefix}: is a folder; -o takes a file name prefix such as "
                         f"{os.path.join(output_prefix, 'kitti')}")
    existing = _existing_outputs(output_prefix)
    if existing and not overwrite:
        raise FrcnnError(f"{existing[0]}: output exists ({len(existing)} files with this prefix); "
                         "choose another -o or pass --overwrite")

    started = time.perf_counter()
    pairs, problems = _list_frames(kitti_config)
    jobs = [(stem, image, label, kitti_config.image_dir_name, clip_boxes) for stem, image, label in pairs]
    frames, class_map = [], {}
    for frame, frame_problems, frame_classes in _map(_scan, jobs, workers, "scanning", "img"):
        problems += frame_problems
        class_map.update(frame_classes)
        if frame is not None:
            frames.append(frame)
    for problem in problems:
        logging.warning("%s", problem)
    if strict and problems:
        raise FrcnnError(f"{problems[0]} ({len(problems)} problems in the input; nothing written; "
                         "fix them or run without --strict to skip them)")
    if not frames:
        raise FrcnnError(f"{kitti_config.root_directory_path}: no usable image/label pairs found")

    scanned = time.perf_counter()
    folds = _partition(frames, kitti_config, seed)
    num_shards = kitti_config.num_shards
    final_paths, fold_shards = [], []
    for fold, fold_frames in enumerate(folds):
        if not fold_frames:
            logging.warning("fold %d is empty: no shard is written for it", fold)
            continue
        if num_shards > len(fold_frames):
            logging.warning("fold %d has %d images for num_shards %d: %d shards will be empty", fold,
                            len(fold_frames), num_shards, num_shards - len(fold_frames))
        for shard, shard_frames in enumerate(_split(fold_frames, max(num_shards, 1))):
            final_paths.append(shard_path(output_prefix, fold, kitti_config.num_partitions, shard, num_shards))
            fold_shards.append(shard_frames)
    remove_stale_temporaries(output_prefix)
    # All outputs become visible together, when everything has been written.
    with contextlib.ExitStack() as outputs:
        temp_paths = [outputs.enter_context(atomic_output(path)) for path in final_paths]
        written = _map(_write_shard, [(temp, frames, embed_images) for temp, frames in zip(temp_paths, fold_shards)],
                       workers, "writing shards", "shard")
        summary = _summary(folds, kitti_config, output_prefix, final_paths, problems, class_map, seed)
        summary["seconds"] = {"scan": round(scanned - started, 3), "write": round(time.perf_counter() - scanned, 3)}
        if sum(written) != sum(f["images"] for f in summary["folds"]):  # nothing becomes visible then
            raise RuntimeError(f"{output_prefix}: wrote {sum(written)} records for "
                               f"{sum(f['images'] for f in summary['folds'])} images; please report this")
        if problems:
            summary["warnings_file"] = output_prefix + "_warnings.json"
            _write_json(outputs, summary["warnings_file"], [str(p) for p in problems])
        _write_json(outputs, output_prefix + "_summary.json", summary)
        for old in set(existing) - set(final_paths) - {summary.get("warnings_file"), output_prefix + "_summary.json"}:
            os.remove(old)
    return summary


def _write_json(outputs, path, value):
    with open(outputs.enter_context(atomic_output(path)), "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=2)


def _summary(folds, kitti_config, output_prefix, shards, problems, class_map, seed):
    fold_rows = []
    for fold, fold_frames in enumerate(folds):
        counts = collections.Counter(o.object_class for f in fold_frames for o in f.objects)
        role = "validation" if (kitti_config.partition_mode == "random" and fold == 0) else "fold"
        if kitti_config.partition_mode == "random" and fold == 1:
            role = "training"
        fold_rows.append({"fold": fold, "role": role, "images": len(fold_frames),
                          "objects": dict(sorted(counts.items()))})
    total = collections.Counter()
    for row in fold_rows:
        total.update(row["objects"])
    return {
        "output_prefix": output_prefix,
        "partition_mode": kitti_config.partition_mode,
        "seed": seed,
        "folds": fold_rows,
        "total_images": sum(row["images"] for row in fold_rows),
        "total_objects": dict(sorted(total.items())),
        "class_map": dict(sorted(class_map.items())),
        "problems": len(problems),
        "shards": shards,
    }


def format_summary(summary):
    """The per-fold class table printed at the end of a conversion."""
    classes = sorted(summary["total_objects"])
    width = max([len(c) for c in classes] + [12])
    header = f"{'class':<{width}}" + "".join(f"{'fold ' + str(r['fold']):>10}" for r in summary["folds"])
    lines = [header + f"{'total':>10}"]
    for name in classes:
        lines.append(f"{name:<{width}}" + "".join(f"{r['objects'].get(name, 0):>10}" for r in summary["folds"])
                     + f"{summary['total_objects'][name]:>10}")
    lines.append(f"{'images':<{width}}" + "".join(f"{r['images']:>10}" for r in summary["folds"])
                 + f"{summary['total_images']:>10}")
    roles = ", ".join(f"fold {r['fold']} = {r['role']}" for r in summary["folds"])
    lines.append(f"{roles}; {len(summary['shards'])} shards at {summary['output_prefix']}-*")
    if summary["problems"]:
        lines.append(f"{summary['problems']} input problems, listed in {summary['warnings_file']}")
    lines.append("Use the lower-case names above as keys of dataset_config.target_class_mapping.")
    return lines


def run_dataset_convert(spec_path, output_prefix, **options):
    """Loads the conversion spec and converts; returns the summary (format_summary presents it)."""
    return convert(load_conversion_spec(spec_path), output_prefix, **options)
