"""TLT's learning-rate schedules as Keras schedules of the global step."""
import tensorflow as tf

from frcnn_tf.errors import FrcnnError


@tf.keras.utils.register_keras_serializable(package="frcnn_tf")
class SoftStartAnnealing(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear start_lr -> base_lr over the first `soft_start` of training, then
    base_lr / divider^k after k annealing points (fractions of total_steps)."""

    def __init__(self, base_lr, start_lr, soft_start, annealing_points, annealing_divider, total_steps):
        self.base_lr, self.start_lr, self.soft_start = float(base_lr), float(start_lr), float(soft_start)
        self.annealing_points = [float(p) for p in annealing_points]
        self.annealing_divider, self.total_steps = float(annealing_divider), int(total_steps)

    def __call__(self, step):
        progress = tf.cast(step, tf.float32) / float(max(self.total_steps, 1))
        warm = tf.minimum(progress / self.soft_start, 1.0) if self.soft_start > 0 else tf.constant(1.0)
        warm_lr = warm * self.base_lr + (1.0 - warm) * self.start_lr
        passed = tf.reduce_sum(tf.cast(tf.constant(self.annealing_points or [2.0]) < progress, tf.float32))
        annealed = self.base_lr / tf.pow(self.annealing_divider, passed)
        return tf.where(progress < self.soft_start, warm_lr, annealed)

    def get_config(self):
        return {"base_lr": self.base_lr, "start_lr": self.start_lr, "soft_start": self.soft_start,
                "annealing_points": self.annealing_points, "annealing_divider": self.annealing_divider,
                "total_steps": self.total_steps}


@tf.keras.utils.register_keras_serializable(package="frcnn_tf")
class ContinuousStep(tf.keras.optimizers.schedules.LearningRateSchedule):
    """base_lr * gamma^(step / (total_steps * step_size / 100)) — TLT's continuous 'step' decay."""

    def __init__(self, base_lr, gamma, step_size, total_steps):
        self.base_lr, self.gamma, self.step_size, self.total_steps = (float(base_lr), float(gamma),
                                                                      float(step_size), int(total_steps))

    def __call__(self, step):
        period = max(self.total_steps * self.step_size / 100.0, 1.0)
        return self.base_lr * tf.pow(self.gamma, tf.cast(step, tf.float32) / period)

    def get_config(self):
        return {"base_lr": self.base_lr, "gamma": self.gamma, "step_size": self.step_size,
                "total_steps": self.total_steps}


def build_schedule(lr_config, total_steps):
    kind = lr_config.WhichOneof("lr_config")
    if kind == "soft_start":
        s = lr_config.soft_start
        return SoftStartAnnealing(s.base_lr, s.start_lr, s.soft_start, s.annealing_points, s.annealing_divider,
                                  total_steps)
    if kind == "step":
        return ContinuousStep(lr_config.step.base_lr, lr_config.step.gamma, lr_config.step.step_size, total_steps)
    raise FrcnnError("training_config.learning_rate: set soft_start or step")


def build_optimizer(optimizer_config, schedule):
    """SGD / Adam / RMSprop from the spec, driven by `schedule` (the spec's lr is the schedule's job)."""
    kind = optimizer_config.WhichOneof("optim")
    if kind == "sgd":
        sgd = optimizer_config.sgd
        return tf.keras.optimizers.SGD(schedule, momentum=sgd.momentum, nesterov=sgd.nesterov)
    if kind == "adam":
        adam = optimizer_config.adam
        return tf.keras.optimizers.Adam(schedule, beta_1=adam.beta_1 or 0.9, beta_2=adam.beta_2 or 0.999,
                                        epsilon=adam.epsilon or 1e-7, amsgrad=adam.amsgrad)
    if kind == "rmsprop":
        return tf.keras.optimizers.RMSprop(schedule)
    raise FrcnnError("training_config.optimizer: set sgd, adam or rmsprop")
