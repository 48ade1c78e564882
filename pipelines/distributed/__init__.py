"""Training across processes and machines with TensorFlow's own distributed engine.

* `cluster`: `TF_CONFIG` validation, the chief, strategy creation at start-up,
  worker temp folders, restart after a lost peer;
* `loop`: `fit_distributed`, the custom training loop (Keras 3 `fit` does not
  run under `MultiWorkerMirroredStrategy`);
* `tpu`: `TPUStrategy` with clear errors when there is no TPU.

`keras-vit train --distribute multi_worker` wires them into the training job
(`pipelines.training.distributed_job`). See docs/distributed.md.
"""

from pipelines.distributed.cluster import (
                                           ClusterConfig,
                                           ClusterError,
                                           create_multi_worker_strategy,
                                           parse_tf_config,
                                           read_tf_config,
                                           restart_process,
                                           worker_temp_dir,
)
from pipelines.distributed.loop import PeerLostError, fit_distributed

__all__ = ["ClusterConfig", "ClusterError", "PeerLostError", "create_multi_worker_strategy",
           "fit_distributed", "parse_tf_config", "read_tf_config", "restart_process",
           "worker_temp_dir"]
