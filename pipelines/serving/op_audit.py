"""Which ops a SavedModel uses, and which of them a stock model server lacks.

Example:
    >>> find_disallowed_ops("savedmodels/vit/1")
    []
"""

import pathlib

_PYTHON_ONLY_OPS = ("PyFunc", "PyFuncStateless", "EagerPyFunc")


def saved_model_op_names(export_dir):
    """Return `{op_name: count}` over the graph and function library of saved_model.pb.

    Example:
        >>> saved_model_op_names("savedmodels/vit/1")["DecodeImage"]
        1
    """
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((pathlib.Path(export_dir) / "saved_model.pb").read_bytes())
    counts = {}
    for meta_graph in saved_model.meta_graphs:
        library = meta_graph.graph_def.library
        functions = {fn.signature.name for fn in library.function}
        nodes = list(meta_graph.graph_def.node)
        for fn in library.function:
            nodes.extend(fn.node_def)
        for node in nodes:
            if node.op in functions:  # a call of a library function, not an op
                continue
            counts[node.op] = counts.get(node.op, 0) + 1
    return counts


def find_disallowed_ops(export_dir):
    """List ops in the SavedModel that a stock `tensorflow_model_server` cannot run.

    Flags Python callbacks (`PyFunc`, `EagerPyFunc`: `tf.py_function`/`numpy_function`
    need the Python interpreter) and any op that is not a core TensorFlow op: one
    unknown to the op registry, or registered at run time by a library such as
    tensorflow_text / tensorflow_addons (`tf.raw_ops` lists only ops built into
    TensorFlow, so those are caught even when the library is loaded here).

    Args:
        export_dir: a SavedModel folder.

    Returns:
        Sorted list of `"OpName: reason"` strings; empty when the export is servable.

    Example:
        >>> find_disallowed_ops("savedmodels/vit/1")
        []
    """
    import tensorflow as tf
    from tensorflow.python.framework import op_def_registry

    problems = []
    for op in sorted(saved_model_op_names(export_dir)):
        if op in _PYTHON_ONLY_OPS or "PyFunc" in op:
            problems.append(f"{op}: calls back into Python (tf.py_function/numpy_function)")
        elif op_def_registry.get(op) is None:
            problems.append(f"{op}: not a registered TensorFlow op")
        elif not hasattr(tf.raw_ops, op):
            problems.append(f"{op}: registered by a non-core library, not in the model server")
    return problems
