"""The tf.data input pipeline: geometry round trip, normalisation, augmentation, determinism."""
import numpy as np
import pytest
import tensorflow as tf

from frcnn_tf.data import augment, convert
from frcnn_tf.data.images import images_with_paths
from frcnn_tf.data.pipeline import InputPipeline, WorkerShard
from frcnn_tf.spec.derived import class_ids
from frcnn_tf.proto import augmentation_config_pb2
from frcnn_tf.spec import load_conversion_spec, load_experiment_spec
from kitti_fixtures import (TRAFFIC_LIGHT_CLASSES, kitti_line, make_kitti, tiny_dataset, tiny_training_spec,
                            write_conversion_spec, write_experiment_spec)


@pytest.fixture(scope="module")
def real_records(traffic_light_records):
    return traffic_light_records


def _labels(root, frame_id):
    stem = frame_id.split("/")[-1]
    rows = [line.split() for line in open(root / "labels" / f"{stem}.txt") if line.strip()]
    return [(r[0], [float(v) for v in r[4:8]]) for r in rows]


def test_boxes_round_trip_through_the_pipeline(real_records, traffic_lights):
    spec = load_experiment_spec(write_experiment_spec(real_records / "e.txt", real_records / "tl-fold-*",
                                                      traffic_lights, TRAFFIC_LIGHT_CLASSES))
    pipeline = InputPipeline(spec)
    ids = class_ids(spec.dataset_config)
    checked = 0
    for batch in pipeline.dataset(training=False, batch_size=4):
        for i in range(batch["images"].shape[0]):
            labels = _labels(traffic_lights, batch["frame_id"][i].numpy().decode())
            height, width = batch["original_size"][i].numpy()
            sy, sx = batch["scale"][i].numpy()
            # Letterbox: one scale per axis from the rounded resized size, canvas 128x192.
            ratio = min(128 / height, 192 / width)
            assert sy == pytest.approx(round(height * ratio) / height) and sx == pytest.approx(
                round(width * ratio) / width)
            n = batch["num_boxes"][i].numpy()
            assert n == len(labels)
            expected = np.array([[b[1] * sy, b[0] * sx, b[3] * sy, b[2] * sx] for _, b in labels])
            np.testing.assert_allclose(batch["boxes"][i, :n].numpy(), expected, atol=0.5)
            assert batch["classes"][i, :n].numpy().tolist() == [ids[c] for c, _ in labels]
            assert (batch["classes"][i, n:].numpy() == -1).all() and (batch["boxes"][i, n:].numpy() == 0).all()
            checked += 1
    assert checked == 557 * 14 // 100


def _tiny_records(tmp_path, embed=False, extension=".png"):
    root = make_kitti(tmp_path / "kitti", {
        "000000": [kitti_line("Car", (8, 4, 40, 20)), kitti_line("Tree", (1, 1, 5, 5))],
        "000001": [kitti_line("car", (0, 0, 64, 48))],
    }, extension=extension)
    spec = load_conversion_spec(write_conversion_spec(tmp_path / "c.txt", root, val_split=50, shards=1,
                                                      extension=extension))
    convert.convert(spec, str(tmp_path / "out" / "t"), workers=1, embed_images=embed)
    return root


def _tiny_spec(tmp_path, root, replace=(), **kw):
    return load_experiment_spec(write_experiment_spec(tmp_path / "e.txt", tmp_path / "out" / "t-fold-*", root,
                                                      {"car": "car"}, height=48, width=64, extension="png",
                                                      replace=replace, **kw))


def _all(pipeline, training):
    return [b for b in pipeline.dataset(training=training, batch_size=1)]


def test_normalisation_bgr_and_unmapped_classes(tmp_path):
    root = _tiny_records(tmp_path)
    spec = _tiny_spec(tmp_path, root)
    batches = _all(InputPipeline(spec), False) + _all(InputPipeline(spec), True)
    assert len(batches) == 2
    first = next(b for b in batches if b["frame_id"][0] == b"images/000000")
    # Background pixel (90, 100, 110) RGB -> BGR minus the spec's means.
    np.testing.assert_allclose(first["images"][0, 30, 60].numpy(), [110 - 103.939, 100 - 116.779, 90 - 123.68],
                               atol=1e-3)
    # 'tree' is not in target_class_mapping: dropped.
    assert first["num_boxes"][0] == 1 and first["classes"][0, 0] == 0


def test_grayscale_and_embedded_images_match_files(tmp_path):
    root = _tiny_records(tmp_path, embed=True)
    gray = [("image_type: RGB", "image_type: GRAY_SCALE"), ("image_channel_order: 'bgr'", "image_channel_order: 'l'"),
            ("    image_channel_mean { key: 'b' value: 103.939 }\n    image_channel_mean { key: 'g' value: 116.779 }\n"
             "    image_channel_mean { key: 'r' value: 123.68 }\n",
             "    image_channel_mean { key: 'l' value: 127.5 }\n"),
            ("training_config {\n  enable_augmentation: true", "training_config {\n  enable_augmentation: false")]
    spec = _tiny_spec(tmp_path, root, replace=gray)
    (embedded,) = _all(InputPipeline(spec), False)
    assert embedded["images"].shape == (1, 48, 64, 1)
    # Pixel (30, 60): background (90, 100, 110) in frame 0; inside the full-image red box in frame 1.
    r, g, b = (90, 100, 110) if embedded["frame_id"][0] == b"images/000000" else (250, 30, 30)
    expected = 0.2989 * r + 0.587 * g + 0.114 * b - 127.5  # tf.image.rgb_to_grayscale weights
    assert embedded["images"][0, 30, 60, 0].numpy() == pytest.approx(expected, abs=0.5)
    for path in (root / "images").iterdir():  # the records alone carry the images
        path.unlink()
    (again,) = _all(InputPipeline(spec), False)
    np.testing.assert_array_equal(again["images"].numpy(), embedded["images"].numpy())


def test_training_stream_is_deterministic_under_the_seed(real_records, traffic_lights):
    path = write_experiment_spec(real_records / "aug.txt", real_records / "tl-fold-*", traffic_lights,
                                 TRAFFIC_LIGHT_CLASSES, replace=[
                                     ("zoom_min: 1.0", "zoom_min: 0.8"), ("zoom_max: 1.0", "zoom_max: 1.2"),
                                     ("translate_max_x: 0", "translate_max_x: 8"),
                                     ("hue_rotation_max: 0.0", "hue_rotation_max: 20.0")])
    spec = load_experiment_spec(path)

    def first_batches():
        data = InputPipeline(spec).dataset(training=True, batch_size=2, repeat=True)
        return [(b["frame_id"].numpy().tolist(), b["images"].numpy(), b["boxes"].numpy()) for b in data.take(3)]

    one, two = first_batches(), first_batches()
    for (ids_a, img_a, box_a), (ids_b, img_b, box_b) in zip(one, two):
        assert ids_a == ids_b
        np.testing.assert_array_equal(img_a, img_b)
        np.testing.assert_array_equal(box_a, box_b)
    spec.random_seed = 7
    assert [ids for ids, _, _ in first_batches()] != [ids for ids, _, _ in one]


def _tiny_shards(tmp_path, shards):
    """An InputPipeline of tiny_dataset (12 frames, 9 for training) converted into `shards` files per fold."""
    root = tiny_dataset(tmp_path / "kitti")
    spec = load_conversion_spec(write_conversion_spec(tmp_path / "c.txt", root, val_split=25, shards=shards))
    convert.convert(spec, str(tmp_path / "tfr" / "t"), workers=1)
    return InputPipeline(load_experiment_spec(tiny_training_spec(tmp_path / "e.txt", tmp_path / "tfr" / "t-fold-*",
                                                                 root, tmp_path / "m.hdf5")))


def _stream(pipeline, steps, **kw):
    data = pipeline.dataset(training=True, batch_size=2, repeat=True, **kw)
    return [(b["frame_id"].numpy().tolist(), b["images"].numpy()) for b in data.take(steps)]


def test_with_fewer_files_than_workers_each_worker_takes_its_slice_of_every_global_batch(tmp_path):
    """One training file, two workers of 2 examples per step: worker 0 takes the first half of each global
    batch of 4 and worker 1 the second, images and augmentation included (the example's index in the global
    stream seeds its augmentation), so together they are the stream one worker with batch 4 reads."""
    pipeline = _tiny_shards(tmp_path, shards=1)
    whole = pipeline.dataset(training=True, batch_size=4, repeat=True, start=4)
    workers = [_stream(pipeline, 3, start=4, shard=WorkerShard(index, 2, 2)) for index in (0, 1)]
    for step, batch in enumerate(whole.take(3)):
        (ids0, images0), (ids1, images1) = workers[0][step], workers[1][step]
        assert ids0 + ids1 == batch["frame_id"].numpy().tolist()
        np.testing.assert_array_equal(np.concatenate([images0, images1]), batch["images"].numpy())


def test_with_enough_files_each_worker_reads_its_own_files(tmp_path):
    pipeline = _tiny_shards(tmp_path, shards=3)  # 3 training files of 3 frames: 2 for worker 0, 1 for worker 1
    seen = [{frame for ids, _ in _stream(pipeline, 3, shard=WorkerShard(index, 2, 2)) for frame in ids}
            for index in (0, 1)]
    assert len(seen[0]) == 6 and len(seen[1]) == 3 and not seen[0] & seen[1]
    # Resuming after 2 steps of the two workers (8 examples): each worker skips its own 4.
    again = _stream(pipeline, 3, shard=WorkerShard(1, 2, 2))
    resumed = _stream(pipeline, 1, start=8, shard=WorkerShard(1, 2, 2))
    assert resumed[0][0] == again[2][0]
    np.testing.assert_array_equal(resumed[0][1], again[2][1])


def test_spatial_augmentation_moves_pixels_and_boxes_together():
    config = augmentation_config_pb2.AugmentationConfig.SpatialAugmentation()
    config.zoom_min, config.zoom_max = 0.7, 1.3
    config.translate_max_x, config.translate_max_y = 10, 6
    config.hflip_probability, config.vflip_probability = 0.5, 0.5
    image = np.zeros((60, 80, 1), np.float32)
    image[12:30, 20:52] = 1.0  # box (y1, x1, y2, x2) = (12, 20, 30, 52)
    box = tf.constant([[12.0, 20.0, 30.0, 52.0]])
    for salt in range(12):
        out, out_box = augment.spatial(tf.constant(image), box, tf.constant([3, salt], tf.int64), config)
        ys, xs = np.nonzero(out.numpy()[..., 0] > 0.5)
        found = [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1]
        np.testing.assert_allclose(out_box.numpy()[0], found, atol=1.01)


def test_hflip_boxes_by_hand():
    boxes = tf.constant([[10.0, 20.0, 30.0, 50.0]])
    out = augment.transform_boxes(boxes, 1.0, 0.0, 0.0, tf.constant(True), tf.constant(False), 40.0, 100.0)
    np.testing.assert_allclose(out.numpy(), [[10.0, 50.0, 30.0, 80.0]])
    out = augment.transform_boxes(boxes, 2.0, 0.0, 5.0, tf.constant(False), tf.constant(False), 40.0, 100.0)
    # zoom 2 about the centre (20, 50), then +5 px in x: y 10->0, 30->40; x 20->-5->0 (clipped), 50->55.
    np.testing.assert_allclose(out.numpy(), [[0.0, 0.0, 40.0, 55.0]])


def test_pipelines_read_beside_the_model_run_without_the_autotuner(tmp_path):
    """evaluate and inference share the two cores with the model: tf.data's autotuner, tuning while the model
    runs, made evaluate 1.75x its forward and the inference command 1.96x (QAT INT8 main job, 2026-11-29)."""
    root = _tiny_records(tmp_path)
    pipeline = InputPipeline(_tiny_spec(tmp_path, root))
    validation = pipeline.dataset(training=False, batch_size=1)
    files = images_with_paths(pipeline, [str(path) for path in sorted((root / "images").iterdir())], 1)
    assert validation.options().autotune.enabled is False and files.options().autotune.enabled is False
    assert len(list(files)) == 2
    assert pipeline.dataset(training=True, batch_size=1).options().autotune.enabled is not False  # training tunes
