"""Config care: unknown keys suggest the nearest one, loader workers are capped at the cores with one
line, and a device error names the option the user gave."""

from __future__ import annotations

import pytest

from liploc.config import load_config
from liploc.errors import ConfigError
from liploc.runtime.device import capped_num_workers, pick_device


@pytest.mark.parametrize(
    ("override", "suggestion"),
    [
        ("train.batchsize=3", "did you mean 'train.batch_size'?"),
        ("trian.epochs=3", "did you mean 'train'?"),
        ("model.embed_dimm=8", "did you mean 'model.embed_dim'?"),
        ("data.datasets=[{layot: kitti}]", "did you mean 'data.datasets.0.layout'?"),
    ],
)
def test_unknown_key_suggests_the_nearest(override: str, suggestion: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert suggestion in str(err.value)


def test_unknown_key_without_a_near_one_has_no_guess() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["xyz=1"])
    assert "unknown key 'xyz'" in str(err.value) and "did you mean" not in str(err.value)


def test_num_workers_capped_at_the_cores_with_one_line() -> None:
    assert capped_num_workers(2, cores=4) == (2, None)
    workers, note = capped_num_workers(16, cores=2)
    assert workers == 2 and note == "data.num_workers 16 lowered to 2, the CPU cores available here"
    assert capped_num_workers(0, cores=1) == (0, None)


def test_device_errors_name_the_device_option() -> None:
    with pytest.raises(ConfigError, match="--device: 'tpu7' is not a torch device"):
        pick_device("tpu7")
