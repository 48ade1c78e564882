"""`export_model`: write, check, verify and publish one version, all or nothing.

A version is written into a hidden `.tmp-<uuid>` sibling folder (TF Serving ignores
non-numeric folders), checked for ops a stock model server lacks, verified in a
fresh process (`verify_export`) and only then renamed to the next integer version,
so a server never sees a half-written or failed export. `publish_version` is that
transaction on its own; the image-to-sequence export (`pipelines.serving.sequence`)
runs its own writing and checks through it.

Example:
    >>> export_model(model, "vit", class_names=["cat", "dog"], keep_versions=3)
    PosixPath('savedmodels/vit/1')
"""

import pathlib
import shutil
import sys

import numpy as np

from pipelines.serving.contract import DEFAULT_CONFIG_BASE_PATH
from pipelines.serving.errors import DisallowedOpsError
from pipelines.serving.model_info import (
    check_class_names,
    check_top_k,
    image_shape_of,
    num_classes_of,
    validate_model_name,
)
from pipelines.serving.op_audit import find_disallowed_ops
from pipelines.serving.repository import (
    check_served_versions,
    new_temp_dir,
    parse_version_policy,
    prune_versions,
    publish,
    remove_dir_atomically,
    write_models_config,
)
from pipelines.serving.samples import as_pixel_images
from pipelines.serving.signatures import write_metadata, write_saved_model
from pipelines.serving.verification import verify_export
from pipelines.serving.warmup import write_warmup_requests

#: Warm-up records replay at most this many of the given images.
MAX_WARMUP_IMAGES = 8


def audit_ops(export_dir):
    """Raises `DisallowedOpsError` listing the ops of `export_dir` a stock model server lacks."""
    disallowed = find_disallowed_ops(export_dir)
    if disallowed:
        raise DisallowedOpsError(
            "The export uses ops a stock tensorflow_model_server lacks:\n  "
            + "\n  ".join(disallowed)
        )


def _write_and_check(model, tmp_dir, model_name, class_names, top_k, warmup_images, verify,
                     verbose):
    """Write the SavedModel, metadata and warm-up file into `tmp_dir`, then check it."""
    write_saved_model(model, tmp_dir, class_names=class_names, top_k=top_k)
    write_metadata(tmp_dir, model_name=model_name, model=model, class_names=class_names,
                   top_k=top_k)
    if warmup_images is None:
        warmup = np.zeros((2, *image_shape_of(model)), np.float32)
    else:
        warmup = warmup_images
    write_warmup_requests(tmp_dir, model_name, warmup)
    audit_ops(tmp_dir)
    if verify:
        report = verify_export(tmp_dir, model=model, sample_images=warmup_images)
        if verbose:
            print(str(report).replace(str(pathlib.Path(tmp_dir).resolve()), "the export"))


def undo_publish(tmp_dir, version_dir, created_dirs):
    """Leaves nothing a server would load: no temp folder, no new version, no new folders.

    Args:
        tmp_dir: the hidden temp folder being written.
        version_dir: the version it was renamed to, or None if not renamed yet.
        created_dirs: folders the export created (deepest first), removed if empty.
    """
    if version_dir is not None and version_dir.exists():
        remove_dir_atomically(version_dir)
    shutil.rmtree(tmp_dir, ignore_errors=True)
    for path in created_dirs:
        if path.exists() and not any(path.iterdir()):
            path.rmdir()


def prune_after_publish(model_dir, model_name, keep_versions, verbose):
    """Keeps the newest `keep_versions` versions; a failure only warns.

    The new version is already live: a failed clean-up must not undo it.
    """
    try:
        removed = prune_versions(model_dir, keep_versions)
    except OSError as error:
        message = f"warning: could not prune old versions of {model_name}: {error}"
        print(message, file=sys.stderr)
    else:
        if removed and verbose:
            print(f"Removed old versions {removed} of {model_name}")


def check_publish_options(keep_versions, version_policy):
    """Checks `keep_versions` (None or >= 1); returns the parsed `version_policy` (or None).

    Raises:
        ValueError: naming the bad value.
    """
    policy = parse_version_policy(version_policy) if version_policy is not None else None
    if keep_versions is not None and int(keep_versions) < 1:
        raise ValueError(f"keep_versions must be >= 1, got {keep_versions}")
    return policy


def publish_version(write_and_check, model_name, base_dir, *, keep_versions=None,
                    config_base_path=DEFAULT_CONFIG_BASE_PATH, policy=None, verbose=True):
    """The all-or-nothing publish step every export shares.

    `write_and_check(tmp_dir)` writes and checks the version in a hidden temp
    folder of `base_dir/model_name`; the folder is then renamed to the next
    version and `base_dir/models.config` rewritten. Any failure (^C included)
    removes the temp folder, a just-renamed version and the folders this call
    created, then re-raises.

    Args:
        write_and_check: callable taking the temp folder (a `pathlib.Path`).
        model_name: a validated model name.
        base_dir: the savedmodels folder (created if missing).
        keep_versions: if set, delete all but the newest `keep_versions` versions.
        config_base_path: where the server sees `base_dir` in models.config.
        policy: a parsed version policy (`check_publish_options`), or None.
        verbose: print where the version went.

    Returns:
        `pathlib.Path` of the new version folder.

    Raises:
        ValueError: before anything is written, when models.config does not parse
            or the version policy would serve versions that will not exist
            (`check_served_versions`).

    Example:
        >>> publish_version(lambda tmp: write_saved_model(model, tmp), "vit", "savedmodels")
        PosixPath('savedmodels/vit/1')
    """
    base_dir = pathlib.Path(base_dir)
    model_dir = base_dir / model_name
    check_served_versions(base_dir, model_name, policy=policy, keep_versions=keep_versions)
    # Folders this export creates (deepest first), removed again if it fails.
    created_dirs = [path for path in (model_dir, *model_dir.parents) if not path.exists()]
    model_dir.mkdir(parents=True, exist_ok=True)
    tmp_dir, version_dir = new_temp_dir(model_dir), None
    try:
        write_and_check(tmp_dir)
        version_dir = publish(tmp_dir, model_dir)
        write_models_config(base_dir, config_base_path=config_base_path,
                            policies={model_name: policy} if policy is not None else None)
    except BaseException:
        undo_publish(tmp_dir, version_dir, created_dirs)
        raise
    if keep_versions is not None:
        prune_after_publish(model_dir, model_name, keep_versions, verbose)
    if verbose:
        print(f"Exported {model_name} version {version_dir.name} to {version_dir}")
    return version_dir


def export_model(
    model,
    model_name,
    base_dir="savedmodels",
    *,
    class_names=None,
    top_k=5,
    warmup_images=None,
    verify=True,
    keep_versions=None,
    config_base_path=DEFAULT_CONFIG_BASE_PATH,
    version_policy=None,
    verbose=True,
):
    """Export `model` as the next version of `base_dir/model_name` for TF Serving.

    Writes into a hidden temp folder, checks the ops, writes the warm-up file,
    verifies in a fresh process (`verify=True`), then renames it to version
    `max(existing) + 1` and updates `base_dir/models.config`. Any failure removes
    the temp folder (and a just-renamed version), leaving `base_dir` as it was.

    Args:
        model: Keras classifier, float32 `[None, H, W, C]` pixels in [0, 255] ->
            logits `[None, K]`.
        model_name: served model name; letters, digits, `_`, `-`.
        base_dir: the savedmodels folder (created if missing).
        class_names: optional K class names, exported as `top_k_labels`.
        top_k: number of classes in `top_k_*` outputs (clamped to K).
        warmup_images: optional `[N, H, W, C]` pixel images for the warm-up records
            and verification; default: zeros for warm-up, random for verification.
        verify: run `verify_export` before publishing the version.
        keep_versions: if set, delete all but the newest `keep_versions` versions.
        config_base_path: where the server sees `base_dir` (`/models` in docker);
            None writes absolute host paths into models.config.
        version_policy: `latest[:N]`, `all` or `specific:V1,V2` for this model in
            models.config; None keeps the current one (default `latest:1`).
        verbose: print where the version went and the verification report.

    Returns:
        `pathlib.Path` of the new version folder, e.g. `savedmodels/vit/3`.

    Example:
        >>> export_model(model, "vit", class_names=["cat", "dog"], keep_versions=3)
        PosixPath('savedmodels/vit/1')
    """
    model_name = validate_model_name(model_name)
    num_classes = num_classes_of(model)
    class_names = check_class_names(class_names, num_classes)
    top_k = check_top_k(top_k, num_classes)
    policy = check_publish_options(keep_versions, version_policy)
    if warmup_images is not None:
        warmup_images = as_pixel_images(warmup_images, image_shape_of(model))[:MAX_WARMUP_IMAGES]

    def write_and_check(tmp_dir):
        _write_and_check(model, tmp_dir, model_name, class_names, top_k, warmup_images, verify,
                         verbose)

    return publish_version(write_and_check, model_name, base_dir, keep_versions=keep_versions,
                           config_base_path=config_base_path, policy=policy, verbose=verbose)
