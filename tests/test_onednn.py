"""`pipelines.onednn`: keras-vit's processes run TensorFlow with oneDNN unless told otherwise."""

import os
import subprocess
import sys

import pytest

from pipelines.onednn import ONEDNN_VARIABLE, prefer_onednn

# Imports `pipelines` first, as `keras-vit` does, then TensorFlow, and prints
# what TensorFlow decided and what the job log line says.
PROBE = ("import pipelines, tensorflow; "
         "from pipelines.onednn import onednn_enabled, onednn_note; "
         "print(onednn_enabled(), '|', onednn_note())")


def _probe(value):
    env = {key: val for key, val in os.environ.items() if key != ONEDNN_VARIABLE}
    if value is not None:
        env[ONEDNN_VARIABLE] = value
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("environ, expected, changed", [
    ({}, "1", True),
    ({ONEDNN_VARIABLE: ""}, "1", True),  # set but empty counts as unset, as for TensorFlow
    ({ONEDNN_VARIABLE: "0"}, "0", False),
    ({ONEDNN_VARIABLE: "1"}, "1", False),
])
def test_prefer_onednn_fills_in_only_an_unset_variable(environ, expected, changed):
    assert prefer_onednn(environ) is changed
    assert environ[ONEDNN_VARIABLE] == expected


@pytest.mark.slow
def test_importing_pipelines_turns_onednn_on_where_tensorflow_would_not():
    # On an AVX2-only CPU TensorFlow alone leaves oneDNN off; with pipelines
    # imported first it is on on every x86 CPU.
    assert _probe(None) == "True | oneDNN: on"


@pytest.mark.slow
def test_a_users_choice_to_turn_onednn_off_is_kept():
    assert _probe("0") == f"False | oneDNN: off ({ONEDNN_VARIABLE}=0)"


def test_the_makefile_exports_the_same_default():
    # make test / make bench run the configuration keras-vit's commands use.
    with open(os.path.join(os.path.dirname(__file__), os.pardir, "Makefile")) as handle:
        assert f"export {ONEDNN_VARIABLE} ?= 1\n" in handle.read()
