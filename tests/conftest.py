"""Small fixtures shared by several test files (nothing autouse: opt in by name)."""

import pytest


@pytest.fixture(scope="session")
def digits_data_dir(tmp_path_factory):
    """A tfds data_dir under pytest's tmp root with `uci_digits` prepared once.

    Preparing it up front keeps tests (and subprocesses started by them) from
    preparing the same folder concurrently, and nothing lands in ~/tensorflow_datasets.
    """
    from pipelines.data import load_datasets

    data_dir = str(tmp_path_factory.mktemp("tfds"))
    load_datasets("digits", data_dir=data_dir, batch_size=64)
    return data_dir
