"""Small fixtures shared by several test files (nothing autouse: opt in by name,
e.g. `pytestmark = pytest.mark.usefixtures("seeded_keras")`)."""

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


@pytest.fixture
def restore_dtype_policy():
    """Puts the global Keras dtype policy back after a test that sets another."""
    import keras

    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


@pytest.fixture
def seeded_keras(restore_dtype_policy):
    """Seeds Python, NumPy and the backend (`keras.utils.set_random_seed(0)`); restores the policy."""
    import keras

    keras.utils.set_random_seed(0)
