import keras_vit


def test_version_is_a_string():
    assert isinstance(keras_vit.__version__, str) and keras_vit.__version__
