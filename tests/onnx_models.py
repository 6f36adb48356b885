"""Small ONNX models built with the ``onnx`` package, for tests, benchmarks and demos (no download).

Plain module, no pytest and no plugin imports. Tests ``import onnx_models`` (conftest puts
tests/ on sys.path); scripts put tests/ on sys.path first, e.g.::

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import onnx_models
    onnx_models.make_fcn_model(tmp_path / "fcn.onnx", in_channels=3)

Every ``make_*`` function writes a model file and returns its path (str). Weights are fixed
(seeded numpy), so a model is byte-identical between runs. Models with metadata take
``metadata=`` (a dict of key -> value; non-string values are JSON-encoded, as the Deepness
plugin and GullySeg expect). The ``reference_*`` functions compute the same models with numpy
(an independent implementation for tests).

Input names are ``input``, outputs ``output``; layout NCHW float32, as GullySeg's contract says
(docs/models.md).
"""

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 13
IR_VERSION = 8  # old enough for every onnxruntime GullySeg supports


def _dims(batch, channels, size):
    """Input/output dims: ``size`` None -> dynamic H, W; int -> square; (h, w) -> fixed."""
    if size is None:
        h, w = "H", "W"
    elif isinstance(size, int):
        h = w = size
    else:
        h, w = size
    return [batch if batch is not None else "N", channels, h, w]


def _save(graph, path, metadata=None, opset=OPSET):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="gullyseg-tests")
    model.ir_version = IR_VERSION
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def fcn_weights(in_channels=3, hidden=8, layers=2, out_channels=1, kernel=3, seed=0):
    """The fixed weights of ``make_fcn_model``: a list of (W, b) per conv layer."""
    rng = np.random.default_rng(seed)
    weights = []
    cin = in_channels
    for i in range(layers):
        cout = out_channels if i == layers - 1 else hidden
        scale = 1.0 / np.sqrt(cin * kernel * kernel)
        w = (rng.standard_normal((cout, cin, kernel, kernel)) * scale * 2.0).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        weights.append((w, b))
        cin = cout
    return weights


def make_fcn_model(path, in_channels=3, hidden=8, layers=2, out_channels=1, kernel=3, activation="sigmoid",
                   size=None, batch=None, seed=0, metadata=None):
    """A fully convolutional model: ``layers`` 'same' convs with ReLU between, then an activation.

    activation: 'sigmoid' (probabilities, [N,1,H,W] or multi-label), 'softmax' (over the
    ``out_channels`` classes) or 'none' (raw logits). size: None (dynamic H, W), int or (h, w).
    batch: None (dynamic N) or a fixed batch size. The receptive field is
    ``layers * (kernel - 1) + 1`` pixels, so windows blended with overlap reproduce a whole-image
    run away from window edges.
    """
    nodes, inits = [], []
    prev = "input"
    for i, (w, b) in enumerate(fcn_weights(in_channels, hidden, layers, out_channels, kernel, seed)):
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        pad = kernel // 2
        out = f"conv{i}"
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [out], pads=[pad] * 4,
                                      kernel_shape=[kernel, kernel]))
        prev = out
        if i < layers - 1:
            nodes.append(helper.make_node("Relu", [prev], [f"relu{i}"]))
            prev = f"relu{i}"
    if activation == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", [prev], ["output"]))
    elif activation == "softmax":
        nodes.append(helper.make_node("Softmax", [prev], ["output"], axis=1))
    elif activation == "none":
        nodes.append(helper.make_node("Identity", [prev], ["output"]))
    else:
        raise ValueError(activation)
    graph = helper.make_graph(
        nodes, "fcn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, _dims(batch, in_channels, size))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, _dims(batch, out_channels, size))],
        inits,
    )
    return _save(graph, path, metadata)


def reference_fcn(x, in_channels=3, hidden=8, layers=2, out_channels=1, kernel=3, activation="sigmoid", seed=0):
    """numpy implementation of ``make_fcn_model`` on a (C, H, W) float array (zero 'same' padding)."""
    x = np.asarray(x, dtype=np.float64)
    weights = fcn_weights(in_channels, hidden, layers, out_channels, kernel, seed)
    pad = kernel // 2
    for i, (w, b) in enumerate(weights):
        c, h, wd = x.shape
        xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
        y = np.zeros((w.shape[0], h, wd))
        for dy in range(kernel):
            for dx in range(kernel):
                y += np.einsum("oc,chw->ohw", w[:, :, dy, dx], xp[:, dy:dy + h, dx:dx + wd])
        y += b[:, None, None]
        x = np.maximum(y, 0) if i < layers - 1 else y
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-x))
    if activation == "softmax":
        e = np.exp(x - x.max(axis=0, keepdims=True))
        return e / e.sum(axis=0, keepdims=True)
    return x


def make_pointwise_model(path, weights=(1.0, 0.0, 0.0), bias=0.0, in_channels=None, activation="sigmoid",
                         classes=1, size=None, batch=None, metadata=None):
    """A per-pixel model (1x1 conv): out = act(sum_c weights[c] * x[c] + bias).

    No spatial context, so its result does not depend on windows at all: the exact reference for
    nodata, extent, mask and resampling tests is ``reference_pointwise``. With ``classes`` K > 1
    the class k logit is ``(k - (K-1)/2) * (sum + bias)`` (class K-1 grows with the input).
    """
    weights = np.asarray(weights, dtype=np.float32)
    in_channels = in_channels or len(weights)
    base = weights.reshape(1, in_channels, 1, 1)
    if classes == 1:
        w = base
        b = np.array([bias], dtype=np.float32)
    else:
        factors = (np.arange(classes) - (classes - 1) / 2.0).astype(np.float32)
        w = (factors[:, None, None, None] * base).astype(np.float32)
        b = (factors * bias).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["logits"], kernel_shape=[1, 1])]
    if activation == "sigmoid":
        nodes.append(helper.make_node("Sigmoid", ["logits"], ["output"]))
    elif activation == "softmax":
        nodes.append(helper.make_node("Softmax", ["logits"], ["output"], axis=1))
    else:
        nodes.append(helper.make_node("Identity", ["logits"], ["output"]))
    graph = helper.make_graph(
        nodes, "pointwise",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, _dims(batch, in_channels, size))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, _dims(batch, classes, size))],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return _save(graph, path, metadata)


def reference_pointwise(x, weights=(1.0, 0.0, 0.0), bias=0.0, activation="sigmoid", classes=1, gully_class=None):
    """numpy reference of ``make_pointwise_model`` on a (C, H, W) normalised input -> (H, W) gully prob."""
    x = np.asarray(x, dtype=np.float64)
    s = np.tensordot(np.asarray(weights, dtype=np.float64), x, axes=(0, 0)) + bias
    if classes == 1:
        return 1.0 / (1.0 + np.exp(-s)) if activation == "sigmoid" else s
    k = classes - 1 if gully_class is None else gully_class
    factors = np.arange(classes) - (classes - 1) / 2.0
    logits = factors[:, None, None] * s[None]
    if activation == "softmax":
        e = np.exp(logits - logits.max(axis=0, keepdims=True))
        return (e / e.sum(axis=0, keepdims=True))[k]
    if activation == "sigmoid":
        return 1.0 / (1.0 + np.exp(-logits[k]))
    return logits[k]


def make_benchmark_model(path, in_channels=3, hidden=16, layers=4, seed=0, size=None, metadata=None):
    """A small but non-trivial conv net for benchmarks (``layers`` 3x3 convs, ``hidden`` channels)."""
    return make_fcn_model(path, in_channels=in_channels, hidden=hidden, layers=layers, seed=seed, size=size,
                          metadata=metadata)


def make_slow_model(path, in_channels=3, hidden=64, layers=12, seed=0):
    """A deliberately heavy FCN (one 256x256 batch of 8 takes seconds on 2 cores): cancel tests."""
    return make_fcn_model(path, in_channels=in_channels, hidden=hidden, layers=layers, seed=seed)


# --- other output layouts (Deepness accepts them; so does GullySeg) -------------------------------

def _conv_stack(prefix, prev, weights, pads, dilations=None):
    """Conv (+ ReLU between) nodes and initialisers for a list of (W, b)."""
    nodes, inits = [], []
    for i, (w, b) in enumerate(weights):
        inits += [numpy_helper.from_array(w, f"{prefix}w{i}"), numpy_helper.from_array(b, f"{prefix}b{i}")]
        d = dilations[i] if dilations else 1
        attrs = {"kernel_shape": list(w.shape[2:]), "pads": [pads[i]] * 4}
        if d != 1:
            attrs["dilations"] = [d, d]
        nodes.append(helper.make_node("Conv", [prev, f"{prefix}w{i}", f"{prefix}b{i}"], [f"{prefix}c{i}"], **attrs))
        prev = f"{prefix}c{i}"
        if i < len(weights) - 1:
            nodes.append(helper.make_node("Relu", [prev], [f"{prefix}r{i}"]))
            prev = f"{prefix}r{i}"
    return nodes, inits, prev


def make_dilated_model(path, dilations=(1, 2, 4, 8, 16, 32), hidden=4, in_channels=3, seed=11, metadata=None):
    """'same' dilated 3x3 convs (ReLU between), sigmoid: receptive-field radius ``sum(dilations)`` (63)."""
    weights = fcn_weights(in_channels, hidden, len(dilations), 1, 3, seed)
    nodes, inits, prev = _conv_stack("", "input", weights, list(dilations), list(dilations))
    nodes.append(helper.make_node("Sigmoid", [prev], ["output"]))
    graph = helper.make_graph(
        nodes, "dilated",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, _dims(None, in_channels, None))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, _dims(None, 1, None))], inits)
    return _save(graph, path, metadata)


def make_nhw_model(path, seed=4, layers=3, hidden=8, size=None, pin_batch=False, metadata=None):
    """``make_fcn_model``'s net with its output squeezed to [N, H, W] (one score per pixel).

    pin_batch: a Reshape to [1, H, W] inside the graph (``size`` must be fixed), the input's batch
    dynamic, as in Deepness' ``one_output_sigmoid_bsx512x512.onnx``.
    """
    weights = fcn_weights(3, hidden, layers, 1, 3, seed)
    nodes, inits, prev = _conv_stack("", "input", weights, [1] * layers)
    nodes.append(helper.make_node("Sigmoid", [prev], ["prob"]))
    if pin_batch:
        h, w = (size, size) if isinstance(size, int) else size
        inits.append(numpy_helper.from_array(np.array([1, h, w], dtype=np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["prob", "shape"], ["output"]))
        out_dims = [1, h, w]
    else:
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "axes"))
        nodes.append(helper.make_node("Squeeze", ["prob", "axes"], ["output"]))
        out_dims = [d for i, d in enumerate(_dims(None, 1, size)) if i != 1]
    graph = helper.make_graph(
        nodes, "nhw",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, _dims(None, 3, size))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_dims)], inits)
    return _save(graph, path, metadata)


def make_core_model(path, kernel=9, size=None, in_channels=3, seed=6, classes=2, metadata=None):
    """One valid (unpadded) kernel x kernel conv, softmax over ``classes``: the output is the window
    less ``kernel // 2`` pixels on every side (Deepness' ``different_output_size_512_to_484.onnx``)."""
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((classes, in_channels, kernel, kernel)) / kernel).astype(np.float32)
    b = (rng.standard_normal(classes) * 0.1).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["logits"], kernel_shape=[kernel, kernel]),
             helper.make_node("Softmax", ["logits"], ["output"], axis=1)]
    out_dims = ["N", classes, "Ho", "Wo"] if size is None else ["N", classes, size - kernel + 1, size - kernel + 1]
    graph = helper.make_graph(
        nodes, "core",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, _dims(None, in_channels, size))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, out_dims)],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return _save(graph, path, metadata)


def make_two_head_model(path, seed=4, metadata=None):
    """Two outputs: 'edges' [N, 1, H, W] (another task) and 'seg' [N, 2, H, W] (softmax background/gully)."""
    heads = fcn_weights(3, 8, 2, 1, 3, seed + 1), fcn_weights(3, 8, 2, 2, 3, seed)
    nodes, inits = [], []
    for name, weights, act in (("edges", heads[0], "Sigmoid"), ("seg", heads[1], "Softmax")):
        n, i, prev = _conv_stack(name, "input", weights, [1, 1])
        nodes += n + [helper.make_node(act, [prev], [name], **({"axis": 1} if act == "Softmax" else {}))]
        inits += i
    graph = helper.make_graph(
        nodes, "two_heads",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, _dims(None, 3, None))],
        [helper.make_tensor_value_info("edges", TensorProto.FLOAT, _dims(None, 1, None)),
         helper.make_tensor_value_info("seg", TensorProto.FLOAT, _dims(None, 2, None))], inits)
    return _save(graph, path, metadata)


def make_nan_model(path, activation="sigmoid", metadata=None):
    """Sigmoid(Log(x0 - 0.5)) (or Sqrt(x0 - 0.5) with activation 'none'): NaN wherever channel 0 < 0.5."""
    c = numpy_helper.from_array(np.array(0.5, dtype=np.float32), "half")
    starts, ends, axes = (numpy_helper.from_array(np.array([v], dtype=np.int64), n)
                          for v, n in ((0, "s"), (1, "e"), (1, "a")))
    nodes = [helper.make_node("Slice", ["input", "s", "e", "a"], ["x0"]),
             helper.make_node("Sub", ["x0", "half"], ["d"])]
    if activation == "sigmoid":
        nodes += [helper.make_node("Log", ["d"], ["l"]), helper.make_node("Sigmoid", ["l"], ["output"])]
    else:
        nodes += [helper.make_node("Sqrt", ["d"], ["output"])]
    graph = helper.make_graph(
        nodes, "nan",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, _dims(None, 3, None))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, _dims(None, 1, None))],
        [c, starts, ends, axes])
    return _save(graph, path, metadata)


# --- models GullySeg must refuse --------------------------------------------------------------

def make_vector_input_model(path, features=16):
    """Input [N, F] (not an image tensor) -> [N, 1]."""
    w = np.ones((features, 1), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["output"])], "vector",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1])],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(graph, path)


def make_classifier_model(path, in_channels=3, classes=2):
    """An image classifier: [N, C, H, W] -> [N, K] (global average pool, flatten): wrong output shape."""
    w = np.ones((classes, in_channels, 1, 1), dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "w"], ["c"], kernel_shape=[1, 1]),
            helper.make_node("GlobalAveragePool", ["c"], ["g"]),
            helper.make_node("Flatten", ["g"], ["output"], axis=1),
        ],
        "classifier",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, _dims(None, in_channels, None))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", classes])],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(graph, path)


def make_downsampling_model(path, in_channels=3):
    """[N, C, H, W] -> [N, 1, H/2, W/2] (a strided conv, declared with symbolic dims): wrong output size."""
    w = np.full((1, in_channels, 2, 2), 0.25, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"], kernel_shape=[2, 2], strides=[2, 2]),
         helper.make_node("Sigmoid", ["c"], ["output"])],
        "downsampling",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, _dims(None, in_channels, None))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1, "H2", "W2"])],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(graph, path)


def make_int_input_model(path, in_channels=3):
    """An image model whose input is uint8 (GullySeg feeds float32): refused."""
    graph = helper.make_graph(
        [helper.make_node("Cast", ["input"], ["f"], to=TensorProto.FLOAT),
         helper.make_node("ReduceMean", ["f"], ["m"], axes=[1], keepdims=1),
         helper.make_node("Sigmoid", ["m"], ["output"])],
        "uint8input",
        [helper.make_tensor_value_info("input", TensorProto.UINT8, _dims(None, in_channels, None))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, _dims(None, 1, None))],
    )
    return _save(graph, path)


def make_not_onnx(path):
    """A file with an .onnx name that is not an ONNX model."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("this is not an ONNX model\n")
    return str(path)


def read_metadata(path):
    """metadata_props of an ONNX file as a dict, read with the onnx package (independent of GullySeg)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}
