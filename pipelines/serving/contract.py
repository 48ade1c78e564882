"""The serving contract of keras-vit exports: names and constants, defined once.

Every name a client, a model server or a check relies on lives here: signature
names, their input and output keys, the files written next to the SavedModel and
the tolerances an export is verified to. `pipelines/serving_checks.py` keeps its
own copy (it runs where `pipelines` cannot be imported); a test asserts the two
agree.

Example:
    >>> from pipelines.serving import contract
    >>> contract.INPUT_NAMES[contract.SERVING_BYTES]
    'images_bytes'
"""

#: float32 `[batch, H, W, C]` pixels in [0, 255] -> outputs.
SERVING_DEFAULT = "serving_default"
#: string `[batch]` of encoded JPEG/PNG/GIF/BMP files -> the same outputs.
SERVING_BYTES = "serving_bytes"
IMAGES_INPUT = "images"
BYTES_INPUT = "images_bytes"
#: The one input of each signature.
INPUT_NAMES = {SERVING_DEFAULT: IMAGES_INPUT, SERVING_BYTES: BYTES_INPUT}

#: Outputs of both signatures: float32 [batch, K], int32 [batch, k], float32 [batch, k].
OUTPUT_KEYS = ("probabilities", "top_k_classes", "top_k_scores")
#: string [batch, k], present when the model was exported with class names.
LABELS_OUTPUT = "top_k_labels"
PIXEL_SCALE = (0, 255)

ASSETS_EXTRA = "assets.extra"
#: TFRecord of PredictionLog replayed by TF Serving before a version goes live.
WARMUP_FILENAME = "tf_serving_warmup_requests"
WARMUP_RELATIVE_PATH = f"{ASSETS_EXTRA}/{WARMUP_FILENAME}"
#: JSON describing the export for clients (image shape, class names, top-k, ...).
METADATA_FILENAME = "keras_vit_export.json"
MODELS_CONFIG_FILENAME = "models.config"
#: Where the tensorflow/serving docker image sees the savedmodels folder.
DEFAULT_CONFIG_BASE_PATH = "/models"
DEFAULT_VERSION_POLICY = "latest:1"
#: Method name TF Serving's predict API requires of a signature.
PREDICT_METHOD = "tensorflow/serving/predict"

#: Probabilities of SavedModel vs Keras: float32 models, and bf16/fp16 compute
#: (which rounds differently in eager Keras and in the saved graph).
FLOAT32_ATOL = 1e-4
MIXED_PRECISION_ATOL = 2e-2

#: Folders a model server must never load: a version being written or deleted.
TMP_PREFIX = ".tmp-"
TRASH_PREFIX = ".trash-"
