"""The model repository a model server polls: versions, publishing, pruning, models.config.

    savedmodels/
      models.config        ModelServerConfig listing every exported model
      <name>/1/ 2/ ...     integer versions, never rewritten in place

Example:
    >>> list_versions("savedmodels/vit")
    [1, 2]
    >>> write_models_config("savedmodels", policies={"vit": "latest:2"})
"""

import errno
import os
import pathlib
import shutil
import uuid

from pipelines.serving.contract import (
    DEFAULT_CONFIG_BASE_PATH,
    DEFAULT_VERSION_POLICY,
    MODELS_CONFIG_FILENAME,
    TMP_PREFIX,
    TRASH_PREFIX,
)
from pipelines.serving.errors import ExportError
from pipelines.serving.model_info import MODEL_NAME_RE


def list_versions(model_dir):
    """Sorted integer versions (folders named by a number) under `model_dir`.

    Example:
        >>> list_versions("savedmodels/vit")
        [1, 2]
    """
    model_dir = pathlib.Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(
        int(child.name) for child in model_dir.iterdir() if child.is_dir() and child.name.isdigit()
    )


def list_exported_models(base_dir):
    """Names of folders under `base_dir` holding at least one version with a saved_model.pb.

    Example:
        >>> list_exported_models("savedmodels")
        ['vit']
    """
    base_dir = pathlib.Path(base_dir)
    if not base_dir.is_dir():
        return []
    return sorted(
        child.name
        for child in base_dir.iterdir()
        if child.is_dir()
        and MODEL_NAME_RE.match(child.name)
        and any(
            (child / str(version) / "saved_model.pb").exists() for version in list_versions(child)
        )
    )


def new_temp_dir(model_dir):
    """A fresh hidden sibling folder name for a version being written (not created).

    TF Serving ignores non-numeric folders, so it never loads a half-written version.

    Example:
        >>> new_temp_dir(pathlib.Path("savedmodels/vit")).name.startswith(".tmp-")
        True
    """
    return pathlib.Path(model_dir) / f"{TMP_PREFIX}{uuid.uuid4().hex}"


def publish(tmp_dir, model_dir):
    """Atomically rename `tmp_dir` to the next free integer version and return it.

    Example:
        >>> publish(tmp_dir, pathlib.Path("savedmodels/vit"))
        PosixPath('savedmodels/vit/3')
    """
    model_dir = pathlib.Path(model_dir)
    for _ in range(100):
        target = model_dir / str(max(list_versions(model_dir), default=0) + 1)
        try:
            # rename(2) is atomic: the server sees no version or a complete one. It
            # fails with ENOTEMPTY/EEXIST if a concurrent export took the number.
            os.rename(tmp_dir, target)
            return target
        except OSError as error:
            if error.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
    raise ExportError(f"Could not claim a new version number under {model_dir}")


def remove_dir_atomically(path):
    """Hide `path` from the server with one rename, then delete it.

    Example:
        >>> remove_dir_atomically("savedmodels/vit/1")
    """
    path = pathlib.Path(path)
    trash = path.with_name(f"{TRASH_PREFIX}{uuid.uuid4().hex}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune_versions(model_dir, keep):
    """Delete all but the `keep` newest versions of a model; return the removed ones.

    Example:
        >>> prune_versions("savedmodels/vit", keep=2)
        [1, 2]
    """
    if int(keep) < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    versions = list_versions(model_dir)
    removed = versions[: max(0, len(versions) - int(keep))]
    for version in removed:
        remove_dir_atomically(pathlib.Path(model_dir) / str(version))
    return removed


def parse_version_policy(spec):
    """Parse `latest[:N]`, `all` or `specific:V1,V2,...` into a ServableVersionPolicy.

    Example:
        >>> parse_version_policy("latest:2").latest.num_versions
        2
    """
    from tensorflow_serving.config.file_system_storage_path_source_pb2 import (
        FileSystemStoragePathSourceConfig,
    )

    policy = FileSystemStoragePathSourceConfig.ServableVersionPolicy()
    kind, _, arg = str(spec).strip().partition(":")
    try:
        if kind == "latest":
            policy.latest.num_versions = int(arg or 1)
            if policy.latest.num_versions < 1:
                raise ValueError
        elif kind == "all" and not arg:
            policy.all.SetInParent()
        elif kind == "specific" and arg:
            policy.specific.versions.extend(int(v) for v in arg.split(","))
        else:
            raise ValueError
    except ValueError:
        raise ValueError(
            f"Invalid version policy {spec!r}: use 'latest[:N]', 'all' or 'specific:V1,V2'"
        ) from None
    return policy


def read_models_config(base_dir):
    """Parse `base_dir/models.config` (ModelServerConfig text format), or None.

    Every export rewrites this file from the one it finds, so a file that does not
    parse is reported before anything is written or trained.

    Args:
        base_dir: the savedmodels folder.

    Raises:
        ValueError: one line naming the file and the parse error (a file edited by
            hand into something the model server would refuse too).
        OSError: the file exists but cannot be read.

    Example:
        >>> read_models_config("savedmodels").model_config_list.config[0].name
        'vit'
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    path = pathlib.Path(base_dir) / MODELS_CONFIG_FILENAME
    if not path.exists():
        return None
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"),
                                 model_server_config_pb2.ModelServerConfig())
    except (text_format.ParseError, UnicodeDecodeError) as error:
        raise ValueError(
            f"{path} is not a valid models.config (a ModelServerConfig text proto): {error}; "
            "fix it, or remove it to have the next export write a new one"
        ) from None


def _policy_for(name, policies, old):
    """The version policy of model `name`: given, else the file's, else the default."""
    policy = policies.get(name)
    if isinstance(policy, str):
        return parse_version_policy(policy)
    if policy is not None:
        return policy
    if name in old and old[name].HasField("model_version_policy"):
        return old[name].model_version_policy
    return parse_version_policy(DEFAULT_VERSION_POLICY)


def _policy_spec(policy):
    """`specific:1,2`, `latest:2` or `all`: a parsed policy as the flag spells it."""
    kind = policy.WhichOneof("policy_choice")
    if kind == "specific":
        return "specific:" + ",".join(str(v) for v in policy.specific.versions)
    if kind == "latest":
        return f"latest:{policy.latest.num_versions}"
    return str(kind)


def check_served_versions(base_dir, model_name, *, policy=None, keep_versions=None):
    """Checks, before an export writes anything, that its version policy serves versions
    that will exist once it is published (and pruned).

    A `specific` policy (given, or kept from models.config) must not name versions
    that `keep_versions` would delete; a given one must not name versions that will
    not exist (the export adds version `max(existing) + 1`). `latest` and `all`
    always serve what is there. Also parses models.config (`read_models_config`).

    Args:
        base_dir: the savedmodels folder.
        model_name: the model being exported.
        policy: the parsed version policy to set, or None to keep the file's.
        keep_versions: None, or the number of newest versions to keep.

    Raises:
        ValueError: one line naming the policy, the versions it serves and the
            versions the model would have.

    Example:
        >>> check_served_versions("savedmodels", "vit", policy=parse_version_policy("specific:9"))
        Traceback (most recent call last):
        ValueError: --version-policy specific:9 serves version(s) [9] of model vit, which will ...
    """
    previous = read_models_config(base_dir)
    old = {c.name: c for c in previous.model_config_list.config} if previous else {}
    effective = _policy_for(model_name, {model_name: policy} if policy is not None else {}, old)
    if effective.WhichOneof("policy_choice") != "specific":
        return
    existing = list_versions(pathlib.Path(base_dir) / model_name)
    after = [*existing, max(existing, default=0) + 1]
    if keep_versions is not None:
        after = after[-int(keep_versions):]
    served = sorted(set(effective.specific.versions))
    missing = [v for v in served if v not in after]
    deleted = [v for v in missing if v in existing]
    spec = _policy_spec(effective)
    if deleted:
        served_by = (f"--version-policy {spec}" if policy is not None
                     else f"its version policy {spec} (kept from models.config)")
        raise ValueError(
            f"--keep {keep_versions} would delete version(s) {deleted} of model {model_name}, "
            f"served by {served_by} (versions now: {existing}; after this export: {after}); "
            "keep more versions or give another --version-policy"
        )
    if missing and policy is not None:
        raise ValueError(
            f"--version-policy {spec} serves version(s) {missing} of model {model_name}, "
            f"which will not exist: after this export it has versions {after}"
        )


def write_models_config(base_dir, *, config_base_path=DEFAULT_CONFIG_BASE_PATH, policies=None):
    """(Re)write `base_dir/models.config` listing every exported model under `base_dir`.

    Args:
        base_dir: the savedmodels folder.
        config_base_path: folder where the server sees `base_dir`; `/models` for the
            `tensorflow/serving` docker image with `-v $PWD/savedmodels:/models`.
            None writes absolute host paths (a model server running on this host).
        policies: `{model_name: ServableVersionPolicy | spec str}` to set; other
            models keep the policy the file already had (default `latest:1`).

    Example:
        >>> write_models_config("savedmodels", policies={"vit": "latest:2"})
        PosixPath('savedmodels/models.config')
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    base_dir = pathlib.Path(base_dir)
    previous = read_models_config(base_dir)
    old = {c.name: c for c in previous.model_config_list.config} if previous else {}
    config = model_server_config_pb2.ModelServerConfig()
    for name in list_exported_models(base_dir):
        entry = config.model_config_list.config.add()
        entry.name = name
        if config_base_path is None:
            entry.base_path = str((base_dir / name).resolve())
        else:
            entry.base_path = config_base_path.rstrip("/") + "/" + name
        entry.model_platform = "tensorflow"
        entry.model_version_policy.CopyFrom(_policy_for(name, dict(policies or {}), old))

    path = base_dir / MODELS_CONFIG_FILENAME
    tmp = base_dir / f"{TMP_PREFIX}{uuid.uuid4().hex}-{MODELS_CONFIG_FILENAME}"
    tmp.write_text(text_format.MessageToString(config))
    # A polling server (--model_config_file_poll_wait_seconds) never reads half a file.
    os.replace(tmp, path)
    return path
