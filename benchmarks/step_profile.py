"""Where a training step's time goes: TensorFlow profiler op times by category.

Method: `model.fit` on a prefetched `tf.data` pipeline runs `steps` training
steps under `tf.profiler.experimental` (after untimed warm-up steps, so no
tracing shows). The profiler's host trace (`*.xplane.pb`, read with the
protobuf classes TensorFlow ships) holds one event per executed TF op, named
`scope/of/the/op:OpType`, on the executor's `tf_Compute` threads. Each op's
duration is added to the first category whose rule it matches:

| category | rule (op type, or name scope, case-insensitive) |
| --- | --- |
| input | `IteratorGetNext*` (the tf.data thread's `IteratorGetNextOp::DoCompute`) |
| optimizer | a scope `adam*` / `sgd` / `optimizer`, or type `ResourceApply*` / `Assign*VariableOp` |
| matmuls | type has `MatMul`, `Einsum` or `Conv2D` (oneDNN's `_Mkl*` kernels included; forward and backward) |
| casts/transposes | type `Cast`, `*Transpose`, `Reshape`, `ConcatV2`, `*Slice*`, `Pack`, `Unpack`, `Tile`, `BroadcastTo`, `ExpandDims`, `Squeeze` |
| attention softmax | type `*Softmax*` (not the loss's), or any other op in an `*attention*` scope outside its projections (`query`, `key`, `value`, `*output*`, `*dense*`): softmax, its gradient, the query scaling |
| LayerNorm | a scope `layer_norm*` / `norm<N>` / `*_norm` (ours: `norm1`, `norm2`, `encoder_norm`) |
| GELU | a scope `gelu`, or type `Erf` / `Erfc` |
| other | everything else (bias adds and their gradients, residual adds, loss, input rescaling, variable reads) |

Shares are of the summed op time (ops on different threads overlap, so the sum
can exceed the step's wall time; `parallelism` = op time / wall time). Only a
plain graph step can be split this way: under XLA the whole step is one fused
cluster op.

Example:
    >>> table = profile_training_step(model, images, labels, steps=3)
    >>> table["categories"]["matmuls"]["share"]
"""

import glob
import re
import tempfile

CATEGORIES = ("input", "optimizer", "matmuls", "attention softmax", "LayerNorm", "GELU",
              "casts/transposes", "other")
_RESHAPING_TYPES = re.compile(r"^(_Mkl)?(Cast|\w*Transpose|Reshape|ConcatV2|\w*Slice\w*|Pack|"
                              r"Unpack|Tile|BroadcastTo|ExpandDims|Squeeze)$")


# An executed op's event: "scope/name:OpType" (executor events like
# "ExecutorState::Process", which wrap the ops, do not match).
_OP_EVENT = re.compile(r"^([^:]+):(\w+)$")


_OPTIMIZER_SCOPE = re.compile(r"(^|/)(adam_?w?|sgd|optimizer)(_\d+)?/")
_NORM_SCOPE = re.compile(r"(^|/)(layer_?norm(alization)?|norm\d*|\w+_norm)(_\d+)?/")
_ATTENTION_SCOPE = re.compile(r"(^|/)\w*attention\w*/")
# The projections' own bias adds inside an attention layer are not the softmax.
_PROJECTION_SCOPE = re.compile(r"/(query|key|value|qkv|\w*output\w*|\w*dense\w*)(_\d+)?/")


def categorize(op_name, op_type):
    """The `CATEGORIES` entry of one executed op (see the module's table).

    Example:
        >>> categorize("vit/encoder_block_0/mlp/dense1/Tensordot/MatMul", "_MklMatMul")
        'matmuls'
    """
    name = op_name.lower() + "/"
    if op_type.startswith("IteratorGetNext"):
        return "input"
    if (_OPTIMIZER_SCOPE.search(name) or op_type.startswith("ResourceApply")
            or re.fullmatch(r"Assign\w*VariableOp", op_type)):
        return "optimizer"
    if any(kind in op_type for kind in ("MatMul", "Einsum", "Conv2D")):
        return "matmuls"
    if _RESHAPING_TYPES.match(op_type):
        return "casts/transposes"
    if "crossentropy" not in name and ("Softmax" in op_type or (
            _ATTENTION_SCOPE.search(name) and not _PROJECTION_SCOPE.search(name))):
        return "attention softmax"
    if _NORM_SCOPE.search(name):
        return "LayerNorm"
    if "gelu" in name or op_type in ("Erf", "Erfc"):
        return "GELU"
    return "other"


def op_times_from_xspace(space):
    """`({(op name, op type): total seconds}, [seconds of each step function call])`."""
    op_seconds, step_seconds = {}, []
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        for line in plane.lines:
            for event in line.events:
                label = plane.event_metadata[event.metadata_id].name
                op = _OP_EVENT.match(label)
                if line.name.startswith("tf_Compute") and op:
                    key = op.groups()
                    op_seconds[key] = op_seconds.get(key, 0.0) + event.duration_ps * 1e-12
                elif (line.name.startswith("tf_data_iterator_get_next")
                      and label == "IteratorGetNextOp::DoCompute"):
                    key = ("IteratorGetNext", "IteratorGetNext")  # waiting for input
                    op_seconds[key] = op_seconds.get(key, 0.0) + event.duration_ps * 1e-12
                elif line.name == "python" and label == "multi_step_on_iterator":
                    step_seconds.append(event.duration_ps * 1e-12)
    return op_seconds, step_seconds


def summarize(op_seconds, step_seconds):
    """The profile table: per category seconds per step and share of all op time."""
    steps = max(len(step_seconds), 1)
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for (name, op_type), seconds in op_seconds.items():
        totals[categorize(name, op_type)] += seconds
    all_ops = sum(totals.values()) or float("nan")
    wall = sum(step_seconds) / steps if step_seconds else float("nan")
    return {
        "steps": len(step_seconds),
        "wall_seconds_per_step": wall,
        "op_seconds_per_step": all_ops / steps,
        "parallelism": all_ops / steps / wall if step_seconds else float("nan"),
        "categories": {category: {"seconds_per_step": seconds / steps,
                                  "share": seconds / all_ops}
                       for category, seconds in totals.items()},
        "top_ops": sorted(([f"{n}:{t}", s / steps] for (n, t), s in op_seconds.items()),
                          key=lambda item: -item[1])[:15],
    }


def profile_training_step(model, images, labels, steps=3, warmup_steps=2):
    """Profiles `steps` training steps of a compiled `model` fed by a prefetched tf.data pipeline.

    Args:
        model: a compiled Keras model (`jit_compile=False`, or nothing splits).
        images, labels: one batch, repeated by the input pipeline.
        steps: profiled steps.
        warmup_steps: untimed steps first (tracing).

    Returns:
        dict: see `summarize`.
    """
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    dataset = tf.data.Dataset.from_tensors((images, labels)).repeat().prefetch(2)
    model.fit(dataset, steps_per_epoch=warmup_steps, epochs=1, verbose=0)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0)
        finally:
            tf.profiler.experimental.stop()
        paths = glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True)
        if not paths:
            raise RuntimeError(f"the profiler wrote no *.xplane.pb under {logdir}")
        space = xplane_pb2.XSpace()
        with open(paths[-1], "rb") as handle:
            space.ParseFromString(handle.read())
    return summarize(*op_times_from_xspace(space))
