"""The training loop: data -> targets -> losses -> optimizer, checkpoints each epoch."""
import glob
import math
import os

import numpy as np
import tensorflow as tf
from absl import logging

from frcnn_tf import calibrators, losses, quantize, schedules
from frcnn_tf.data.pipeline import InputPipeline, WorkerShard, shard_sources
from frcnn_tf.detectors import KerasDetector
from frcnn_tf.errors import FrcnnError
from frcnn_tf.evaluation import evaluate_detector, format_table
from frcnn_tf.io_utils import refuse_to_overwrite, remove_stale_temporaries
from frcnn_tf.model import checkpoints
from frcnn_tf.model.frcnn import FasterRCNN, build_model, override_regularizers, with_proposals
from frcnn_tf.settings import DetectionSettings, ProposalSettings, RoiSampling, RpnSampling
from frcnn_tf.spec import parse_experiment_spec
from frcnn_tf.spec.derived import class_names, deployed_section_name, regression_weights
from frcnn_tf.spec.validate import require_section
from frcnn_tf.train import distribution

LOSS_NAMES = ("rpn_class", "rpn_regress", "rcnn_class", "rcnn_regress", "regularization", "total")
# Per-step statistics beside the losses (FasterRCNN.TrainOutputs): the share of ground-truth boxes a
# proposal covers with IoU >= 0.5, and the foreground RoIs sampled per image.
STAT_NAMES = ("recall", "fg_rois")


def _global_rows(images):
    """(first, total): where this replica's images sit in the step's global batch (replicas take equal
    consecutive slices in replica order), so that target sampling is that of the undivided batch."""
    context = tf.distribute.get_replica_context()
    batch = tf.shape(images)[0]
    return tf.cast(context.replica_id_in_sync_group, tf.int32) * batch, batch * context.num_replicas_in_sync


class TrainStep:
    """One optimisation step of a FasterRCNN under a tf.distribute strategy (default: no distribution).

    The model owns the forward (FasterRCNN.train_outputs); the step weighs its losses (the spec's
    lambda_* factors), takes the gradient and applies the optimizer. Under N replicas each replica
    divides its loss (the mean over its images) by N and the optimizer sums the replicas' gradients,
    which is the gradient of the mean over the global batch; the reported losses are the replicas' mean.
    """

    def __init__(self, spec, frcnn, optimizer, strategy):
        self.frcnn, self.optimizer, self.strategy = frcnn, optimizer, strategy
        self.training = spec.training_config
        self.step = tf.function(self._distributed_step)
        self.losses = tf.function(self._distributed_losses)

    def loss_values(self, images, gt_boxes, gt_classes, seed, training_mode=True):
        """The weighted losses and the training statistics {name: scalar} of one batch (LOSS_NAMES,
        STAT_NAMES; training_mode: BatchNorm in training mode)."""
        frcnn, training = self.frcnn, self.training
        out = frcnn.train_outputs(images, gt_boxes, gt_classes, seed, training=training_mode,
                                  rows=_global_rows(images))
        rpn_batch, roi_batch = frcnn.rpn_sampling.mini_batch, frcnn.roi_sampling.mini_batch
        values = {
            "rpn_class": training.lambda_rpn_class * losses.rpn_class_loss(out.rpn_labels, out.rpn_logits, rpn_batch),
            "rpn_regress": training.lambda_rpn_regr * losses.rpn_regression_loss(
                out.rpn_labels, out.rpn_targets, out.rpn_deltas, rpn_batch),
            "rcnn_class": training.lambda_cls_class * losses.rcnn_class_loss(out.roi_labels, out.class_logits,
                                                                            roi_batch),
            "rcnn_regress": training.lambda_cls_regr * losses.rcnn_regression_loss(
                out.roi_labels, out.roi_targets, out.deltas, frcnn.num_classes, roi_batch),
            "regularization": tf.add_n(frcnn.model.losses) if frcnn.model.losses else tf.constant(0.0),
        }
        values["total"] = tf.add_n(list(values.values()))
        return {**values, "recall": out.proposal_recall, "fg_rois": out.foreground_rois}

    def _replica_step(self, images, gt_boxes, gt_classes, seed):
        variables = self.frcnn.model.trainable_variables
        loss_scaling = isinstance(self.optimizer, tf.keras.mixed_precision.LossScaleOptimizer)
        with tf.GradientTape() as tape:
            values = self.loss_values(images, gt_boxes, gt_classes, seed)
            scaled = values["total"] / self.strategy.num_replicas_in_sync
            if loss_scaling:
                scaled = self.optimizer.get_scaled_loss(scaled)
        gradients = tape.gradient(scaled, variables)
        if loss_scaling:
            gradients = self.optimizer.get_unscaled_gradients(gradients)
        self.optimizer.apply_gradients(zip(gradients, variables))
        return values

    def _mean_over_replicas(self, replica_fn, *args, **kwargs):
        """Runs replica_fn (-> {name: value}) on every replica; {name: mean over the replicas} of LOSS_NAMES and
        STAT_NAMES, in one collective."""
        names = LOSS_NAMES + STAT_NAMES

        def stacked(*a, **k):
            values = replica_fn(*a, **k)
            return tf.stack([values[name] for name in names])
        mean = self.strategy.reduce(tf.distribute.ReduceOp.MEAN, self.strategy.run(stacked, args=args, kwargs=kwargs),
                                    axis=None)
        return dict(zip(names, tf.unstack(mean)))

    def _distributed_step(self, batch, seed):
        return self._mean_over_replicas(self._replica_step, batch["images"], batch["boxes"], batch["classes"], seed)

    def _distributed_losses(self, batch, seed):
        """The losses of the current weights in inference mode, without a training step."""
        return self._mean_over_replicas(self.loss_values, batch["images"], batch["boxes"], batch["classes"], seed,
                                        training_mode=False)


def count_records(files):
    """Number of records in TFRecord files."""
    return int(tf.data.TFRecordDataset(files).reduce(np.int64(0), lambda count, _: count + 1))


def _output_model(spec, results_dir):
    if spec.training_config.output_model:
        return spec.training_config.output_model
    if results_dir:
        return os.path.join(results_dir, f"frcnn_{spec.model_config.arch.replace(':', '_')}.hdf5")
    raise FrcnnError("set training_config.output_model in the spec or pass --results_dir")


def _log_weight_loading(path, status):
    width = max(len(name) for name in status)
    logging.info("pretrained weights from %s:", path)
    for name, state in status.items():
        logging.info("  %-*s %s", width, name, state)
    loaded = sum(state == "loaded" for state in status.values())
    logging.info("pretrained weights: %d of %d layers loaded", loaded, len(status))
    if loaded == 0:
        raise FrcnnError(f"{path}: no layer of the pretrained weights matches this model by name and shape")


def training_frcnn(model, spec):
    """A FasterRCNN of `model` with the spec's training proposals and target sampling."""
    return FasterRCNN(model, train_proposals=ProposalSettings.from_section(spec.training_config),
                      rpn_sampling=RpnSampling.from_spec(spec), roi_sampling=RoiSampling.from_spec(spec))


QAT_CALIBRATION_IMAGES = 80  # export's PTQ default, 10 x 8 (TLT's --batches, --batch_size); one at a time: the
# 36 calibrated tensors of a batch of 8 at 384x1248 outgrew 24 GB


def _with_qat(model, spec, source, pipeline):
    """The model, converted to QAT when the spec enables it, its activation ranges calibrated on the
    first 80 images of the training stream (augmented, as export calibrates) in the graph export writes:
    with the deployed section's proposals, block 4 sees as many RoIs as deployed (TLT's defaults: 300, not
    training's 2000, which took 5x the time). A QAT model needs enable_qat and keeps its ranges."""
    if quantize.is_quantized(model):
        quantize.check_scheme(model, source)
        if not spec.training_config.enable_qat:
            raise FrcnnError(f"{source}: is a QAT model but training_config.enable_qat is false; "
                             "set enable_qat: true (a QAT model cannot be trained in float)")
        return model
    if spec.training_config.enable_qat:
        logging.info("enable_qat: converting the model to quantization-aware training; calibrating its activation "
                     "ranges on %d training images", QAT_CALIBRATION_IMAGES)
        batches = pipeline.dataset(training=True, batch_size=1).take(QAT_CALIBRATION_IMAGES)
        return quantize_for_training(model, spec, batches.map(lambda batch: batch["images"]))
    return model


def quantize_for_training(model, spec, batches):
    """The QAT copy of a float model (quantize.quantize_model), its activation ranges measured over `batches`
    (image batches [N, H, W, C], network inputs) in the graph export writes: with the deployed section's
    proposals (spec.derived.deployed_section_name; training_config's when the spec has neither)."""
    section = deployed_section_name(spec)
    if not spec.HasField(section):
        section = "training_config"
    proposals = ProposalSettings.from_section(getattr(spec, section))
    logging.info("QAT calibration with %s's proposals (%d per image)", section, proposals.post_nms_top_n)
    qat, ranges = quantize.quantize_model(model, checkpoints.CUSTOM_OBJECTS, batches,
                                          calibration_model=with_proposals(model, proposals))
    for line in calibrators.clipping_report(ranges):
        logging.info("QAT activation range %s", line)
    return qat


def _initial_model(spec, enc_key, pipeline):
    """(Keras model, optimizer or None, first epoch index, metadata of the start model)."""
    training = spec.training_config
    if training.resume_from_model:
        model, metadata = checkpoints.load_model(training.resume_from_model, "resume_from_model", enc_key)
        epoch, saved_optimizer = checkpoints.epoch_of(training.resume_from_model), model.optimizer
        model = _with_qat(model, spec, training.resume_from_model, pipeline)
        if epoch >= training.num_epochs:
            raise FrcnnError(f"{training.resume_from_model}: the run is finished (epoch {epoch} of num_epochs "
                             f"{training.num_epochs}); raise training_config.num_epochs to train further")
        logging.info("resuming from %s at epoch %d", training.resume_from_model, epoch + 1)
        return model, saved_optimizer, epoch, metadata
    if training.retrain_pruned_model:
        model, metadata = checkpoints.load_model(training.retrain_pruned_model, "retrain_pruned_model", enc_key)
        logging.info("retraining the pruned model %s", training.retrain_pruned_model)
        if not quantize.is_quantized(model):
            model = override_regularizers(model, training.regularizer)
        return _with_qat(model, spec, training.retrain_pruned_model, pipeline), None, 0, metadata
    model = build_model(spec)
    if training.pretrained_weights:
        _log_weight_loading(training.pretrained_weights,
                            checkpoints.load_matching_weights(model, training.pretrained_weights, enc_key))
    return _with_qat(model, spec, "the new model", pipeline), None, 0, {}


def _validate(spec, frcnn, metadata, writer, epoch):
    """mAP of the current weights on the validation split (evaluation_config settings)."""
    detector = KerasDetector(frcnn, metadata["class_names"], DetectionSettings.from_section(
        spec.evaluation_config, metadata["regression_weights"]))
    result = evaluate_detector(spec, detector)
    for line in format_table(result):
        logging.info("validation after epoch %d: %s", epoch, line)
    with writer.as_default(step=epoch):
        tf.summary.scalar("validation/mAP", result["map"])
    return result["map"]


def early_stop(history, config):
    """True when the epoch-average total loss (EarlyStopping monitor 'loss') has not fallen below the best
    earlier one by more than config.min_delta for config.patience epochs. history: [{'total': ...}, ...]."""
    losses_so_far = [entry["total"] for entry in history]
    if len(losses_so_far) <= config.patience:
        return False
    best_before = min(losses_so_far[:-config.patience])
    return min(losses_so_far[-config.patience:]) > best_before - config.min_delta


def _restore_optimizer_state(optimizer, saved, variables):
    """Copies step count and slots of a resumed optimizer into the one built from the spec.

    The schedule is the spec's (its total steps follow the current num_epochs); slots are
    copied only when the optimizer kind and variables match, else training resumes with
    fresh slots at the saved step.
    """
    optimizer.build(variables)
    optimizer.iterations.assign(saved.iterations)
    source, target = saved.variables, optimizer.variables
    if type(saved) is type(optimizer) and [v.shape for v in source] == [v.shape for v in target]:
        for old, new in zip(source, target):
            new.assign(old)
    else:
        logging.warning("the saved optimizer (%s) does not match the spec's (%s): its slots are not restored",
                        type(saved).__name__, type(optimizer).__name__)


def amp_policy():
    """TLT's --use_amp: bfloat16 compute on CPUs, float16 (with loss scaling) on GPUs."""
    return "mixed_float16" if tf.config.list_physical_devices("GPU") else "mixed_bfloat16"


def build_training_optimizer(training, total_steps):
    """The spec's optimizer and schedule, with loss scaling under a float16 policy."""
    optimizer = schedules.build_optimizer(training.optimizer,
                                          schedules.build_schedule(training.learning_rate, total_steps))
    if tf.keras.mixed_precision.global_policy().compute_dtype == "float16":
        optimizer = tf.keras.mixed_precision.LossScaleOptimizer(optimizer)
    return optimizer


def train(spec, results_dir=None, strategy=None, max_steps_per_epoch=None, use_amp=False, key=None,
          overwrite=False, validate=True):
    """Trains per the validated experiment spec; returns {'checkpoints': [...], 'history': [...]}.

    strategy: a tf.distribute strategy (default: TensorFlow's, one device); batch_size_per_gpu is per
    replica. Under a multi-worker strategy only the chief writes (and returns) checkpoints; the other
    workers return no checkpoints.
    max_steps_per_epoch caps the steps of each epoch (for smoke tests and benchmarks).
    use_amp computes in 16-bit floats (variables stay float32; see amp_policy).
    key: for .tlt model files (default: the spec's enc_key).
    overwrite: replace the checkpoints of an earlier run with the same output_model (a resumed
    run continues its own run and needs no overwrite).
    validate: False skips evaluation_config's validation during training (for a caller that
    evaluates the last checkpoint itself).
    """
    if use_amp and spec.training_config.enable_qat:
        raise FrcnnError("--use_amp and enable_qat do not combine: QAT simulates int8 on float32")
    strategy = strategy or tf.distribute.get_strategy()
    role = distribution.Role.of(strategy)
    previous_policy = tf.keras.mixed_precision.global_policy()
    tf.keras.mixed_precision.set_global_policy(amp_policy() if use_amp else "float32")
    try:
        with role.scratch() as scratch:
            return _train(spec, results_dir, strategy, role, scratch, max_steps_per_epoch,
                          checkpoints.model_key(spec, key), overwrite, validate)
    finally:
        tf.keras.mixed_precision.set_global_policy(previous_policy)


def _check_output_model(output_model, training, overwrite):
    """Refuses the checkpoints of another run at output_model; removes temporaries of killed runs."""
    checkpoints.check_model_path(output_model, "training_config.output_model")
    stem, extension = os.path.splitext(output_model)
    remove_stale_temporaries(stem)
    if not training.resume_from_model:
        earlier = sorted(glob.glob(f"{glob.escape(stem)}.epoch*{glob.escape(extension)}"))
        refuse_to_overwrite(earlier, overwrite, "another output_model, resume that run with resume_from_model,")


def _diverged(what, last_good):
    return FrcnnError(f"{what}; training stopped (last good checkpoint: {last_good or 'none written'}); "
                      "lower the learning rate")


def _save_checkpoint(frcnn, step, batch, seed, path, metadata, enc_key, last_good, epoch):
    """Saves the epoch's checkpoint if its weights are finite and give a finite loss on the epoch's last batch."""
    values = {name: float(value) for name, value in step.losses(batch, seed).items()}
    weights_finite = all(np.isfinite(w.numpy()).all() for w in frcnn.model.weights)
    if not weights_finite:
        raise _diverged(f"the weights became non-finite at the end of epoch {epoch} (not saved as {path})",
                        last_good)
    if not math.isfinite(values["total"]):
        raise _diverged(f"the loss of the weights at the end of epoch {epoch} became {values['total']} "
                        f"(not saved as {path})", last_good)
    try:
        checkpoints.save_model(frcnn.model, path, {**metadata, "epoch": epoch}, key=enc_key)
    except OSError as err:
        raise FrcnnError(f"{path}: cannot write the checkpoint ({err}); last good checkpoint: "
                         f"{last_good or 'none written'}") from None
    logging.info("saved %s", path)


def _resume_position(optimizer, metadata, batch_size, epoch_start_step, source):
    """The examples of the training stream a resumed run has trained on (checkpoint metadata
    'examples_seen'; earlier checkpoints: steps x this run's global batch). A checkpoint trained with
    another global batch (another replica count or batch_size_per_gpu) moves the step counter to the
    start of the epoch in this run's steps, so the schedule continues at the epoch where the run stopped."""
    saved_batch = metadata.get("global_batch_size", batch_size)
    examples = metadata.get("examples_seen", int(optimizer.iterations.numpy()) * saved_batch)
    if saved_batch != batch_size:
        optimizer.iterations.assign(epoch_start_step)
        logging.info("%s was trained with a global batch of %d, this run's is %d: training continues after its %d "
                     "examples, the schedule at step %d", source, saved_batch, batch_size, examples, epoch_start_step)
    return examples


def _train(spec, results_dir, strategy, role, scratch, max_steps_per_epoch, enc_key, overwrite, validate):
    training = spec.training_config
    tf.keras.utils.set_random_seed(spec.random_seed)
    output_model = _output_model(spec, results_dir)
    if role.chief:
        _check_output_model(output_model, training, overwrite)
    # The other workers write the same files into their scratch folder; messages name the chief's.
    written_model = os.path.join(scratch, os.path.basename(output_model)) if scratch else output_model
    pipeline = InputPipeline(spec)
    train_files = [f for files, _ in shard_sources(spec.dataset_config, training=True) for f in files]
    num_images = count_records(train_files)
    replicas, per_replica = strategy.num_replicas_in_sync, training.batch_size_per_gpu
    batch_size = per_replica * replicas
    if num_images < batch_size:
        raise FrcnnError(f"{train_files[0]}: {num_images} training images, fewer than one batch of {batch_size}")
    validation_period = spec.evaluation_config.validation_period_during_training if validate and spec.HasField(
        "evaluation_config") else 0
    if validation_period > training.num_epochs:  # no epoch of this run validates
        validation_period = 0
    pipeline.check_images(training=True)
    if validation_period:
        pipeline.check_images(training=False)
    steps = max(num_images // batch_size, 1)
    if max_steps_per_epoch:
        steps = min(steps, max_steps_per_epoch)
    total_steps = steps * training.num_epochs
    logging.info("training on %d replica(s) (%s): global batch %d = batch_size_per_gpu %d x %d replica(s); the loss "
                 "is the mean over the global batch and the spec's learning rate applies to it unscaled; %d steps "
                 "per epoch", replicas, role.describe(strategy), batch_size, per_replica, replicas, steps)

    with strategy.scope():
        model, saved_optimizer, first_epoch, metadata = _initial_model(spec, enc_key, pipeline)
        frcnn = training_frcnn(model, spec)
        optimizer = build_training_optimizer(training, total_steps)
        examples_seen = 0
        if saved_optimizer is not None:
            _restore_optimizer_state(optimizer, saved_optimizer, frcnn.model.trainable_variables)
            examples_seen = _resume_position(optimizer, metadata, batch_size, first_epoch * steps,
                                             training.resume_from_model)
        frcnn.model.compile(optimizer=optimizer)  # saved with the model for resume
        step = TrainStep(spec, frcnn, optimizer, strategy)
    first_step = int(optimizer.iterations.numpy())

    def worker_stream(context):
        """This worker's batches: one per local replica and step, from its shard of the stream."""
        worker_batch = per_replica * context.num_replicas_in_sync // context.num_input_pipelines
        return pipeline.dataset(training=True, batch_size=per_replica, repeat=True, start=examples_seen,
                                shard=WorkerShard(context.input_pipeline_id, context.num_input_pipelines, worker_batch))
    iterator = iter(strategy.distribute_datasets_from_function(worker_stream))
    writer = tf.summary.create_file_writer(os.path.join(os.path.dirname(written_model), "logs"))
    metadata = {**metadata, "arch": spec.model_config.arch, "class_names": class_names(spec.dataset_config),
                "regression_weights": list(regression_weights(training)), "qat": bool(training.enable_qat),
                "global_batch_size": batch_size}
    saved, history = [], []
    last_good = training.resume_from_model
    epoch, index = first_epoch, 0
    try:
        for epoch in range(first_epoch, training.num_epochs):
            logging.info("epoch %d/%d", epoch + 1, training.num_epochs)
            progress = tf.keras.utils.Progbar(steps, stateful_metrics=LOSS_NAMES + STAT_NAMES + ("lr",))
            sums = dict.fromkeys(LOSS_NAMES + STAT_NAMES, 0.0)
            for index in range(steps):
                global_step = int(optimizer.iterations.numpy())
                seed = tf.constant([spec.random_seed, global_step], tf.int64)
                with pipeline.naming_bad_input(training=True):
                    batch = next(iterator)
                values = {name: float(value) for name, value in step.step(batch, seed).items()}
                if not all(math.isfinite(v) for v in values.values()):
                    raise _diverged(f"the loss became {values['total']} at epoch {epoch + 1}, step {index + 1}",
                                    last_good)
                lr = float(optimizer.learning_rate(global_step)) if callable(optimizer.learning_rate) else float(
                    optimizer.learning_rate.numpy())  # a variable, mirrored under a strategy
                for name in sums:
                    sums[name] += values[name]
                progress.update(index + 1, [(name, values[name]) for name in sums] + [("lr", lr)])
                with writer.as_default(step=global_step):
                    for name in LOSS_NAMES:
                        tf.summary.scalar(f"loss/{name}", values[name])
                    for name in STAT_NAMES:
                        tf.summary.scalar(f"train/{name}", values[name])
                    tf.summary.scalar("learning_rate", lr)
            history.append({"epoch": epoch + 1, **{name: total / steps for name, total in sums.items()}})
            logging.info("epoch %d means: %s", epoch + 1,
                         ", ".join(f"{name} {history[-1][name]:.4g}" for name in sums))
            stop = early_stop(history, training.early_stopping) if training.HasField("early_stopping") else False
            if stop:
                logging.info("early_stopping: the epoch loss has not improved by min_delta %g for %d epochs; "
                             "stopping after epoch %d", training.early_stopping.min_delta,
                             training.early_stopping.patience, epoch + 1)
            if (epoch + 1) % training.checkpoint_interval == 0 or epoch + 1 == training.num_epochs or stop:
                seen = examples_seen + (int(optimizer.iterations.numpy()) - first_step) * batch_size
                path = checkpoints.checkpoint_path(written_model, epoch + 1)
                _save_checkpoint(frcnn, step, batch, seed, path, {**metadata, "examples_seen": seen}, enc_key,
                                 last_good, epoch + 1)
                last_good = checkpoints.checkpoint_path(output_model, epoch + 1)
                if role.chief:
                    saved.append(path)
            if validation_period and (epoch + 1) % validation_period == 0:
                try:
                    history[-1]["validation_map"] = _validate(spec, frcnn, metadata, writer, epoch + 1)
                except FrcnnError as err:
                    logging.error("validation after epoch %d failed, training continues: %s", epoch + 1, err)
            if stop:
                break
    except distribution.PEER_ERRORS as err:
        lost = role.lost_peer(err, epoch + 1, index + 1, last_good)
        if lost is None:
            raise
        raise lost from None
    writer.flush()
    return {"checkpoints": saved, "history": history}


def run_train(spec_path, results_dir=None, gpus=1, max_steps_per_epoch=None, use_amp=False, key=None,
              overwrite=False, validate=True):
    """Loads and validates the spec, then trains on `gpus` GPUs, or as one worker of the TF_CONFIG cluster;
    returns train()'s result."""
    spec, source = parse_experiment_spec(spec_path)
    for section in ("training_config", "dataset_config"):
        require_section(spec, source, section)
    return train(spec, results_dir, distribution.strategy_for(gpus), max_steps_per_epoch, use_amp, key, overwrite,
                 validate)
