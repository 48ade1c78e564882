"""The distributed options of `keras-vit train` (`--tpu`, `--startup-timeout`, `--data-service`).

Kept apart from `pipelines.training.cli` so the multi-worker job's flags live
beside its code (`pipelines.training.distributed_job`).

Example:
>>> add_distributed_arguments(parser.add_argument_group("optimisation"))
"""


def add_distributed_arguments(group):
    """Adds `--tpu`, `--startup-timeout` and `--data-service` to an argparse group.

    Args:
        group: an argparse parser or group (the one holding `--distribute`).
    """
    group.add_argument("--tpu", help="with --distribute tpu: the TPU name, grpc://HOST:PORT "
                                     "or 'local' (default: this TPU VM / $TPU_NAME)")
    group.add_argument("--startup-timeout", type=float,
                       help="with --distribute multi_worker: seconds to wait for every worker "
                            "of TF_CONFIG before failing (default 120)")
    group.add_argument("--data-service",
                       help="grpc://HOST:PORT of a tf.data service dispatcher (`keras-vit "
                            "data-service`) that runs the training input pipeline")
