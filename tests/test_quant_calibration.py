"""Calibration data adapters, their errors and warnings; per-layer sensitivity; QuantConfig."""

import warnings

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from edgekit.data.task import Split, Task
from edgekit.errors import DataError, ShapeError, UsageError
from edgekit.quantize import (
    CalibrationRangeWarning,
    QuantConfig,
    calibration_batches,
    layer_sensitivity,
    quantizable_layers,
    sqnr_db,
)

from conftest import tiny_net

EX = (torch.zeros(1, 1, 8, 8),)


def _data(n=20, scale=1.0):
    return np.random.RandomState(0).rand(n, 1, 8, 8).astype(np.float32) * scale


def test_dataloader_of_pairs_capped():
    ds = TensorDataset(torch.from_numpy(_data(50)), torch.zeros(50, dtype=torch.long))
    batches = calibration_batches(DataLoader(ds, batch_size=8), example_inputs=EX,
                                  input_names=["image"], limit=20)
    assert len(batches) == 20 and batches[0][0].shape == (1, 1, 8, 8)
    assert batches[0][0].dtype == np.float32


def test_iterable_of_arrays_and_single_samples():
    arrays = list(_data(5))  # samples without the batch dimension
    batches = calibration_batches(iter(arrays), example_inputs=EX, input_names=["image"])
    assert len(batches) == 5
    np.testing.assert_array_equal(batches[3][0][0], arrays[3])


def test_npz_by_input_name_and_default_key(tmp_path):
    np.savez(tmp_path / "a.npz", image=_data(7))
    np.savez(tmp_path / "b.npz", x=_data(7))
    for f in ("a.npz", "b.npz"):
        assert len(calibration_batches(tmp_path / f, example_inputs=EX, input_names=["image"],
                                       limit=4)) == 4


def test_split_and_batch_size_follow_example_inputs():
    split = Split((torch.from_numpy(_data(10)),), torch.zeros(10))
    batches = calibration_batches(split, example_inputs=(torch.zeros(2, 1, 8, 8),),
                                  input_names=["image"])
    assert len(batches) == 5 and batches[0][0].shape == (2, 1, 8, 8)


def test_a_task_trained_on_shorter_sequences_calibrates_on_its_deployed_length():
    # train split at 64 tokens, validation and test at the deployed 128: the train split
    # cannot feed the 128-token artifact, the validation split can
    def split(n, length):
        return Split((torch.randint(0, 50, (n, length)), torch.ones(n, length)), torch.zeros(n))

    task = Task(name="t", kind="classification", metric="top1", higher_is_better=True,
                train=split(20, 64), val=split(6, 128), test=split(6, 128), loss=None,
                score=None)
    ex = (torch.zeros(1, 128, dtype=torch.int64), torch.ones(1, 128))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a constant mask beside a constant example: no warning
        batches = calibration_batches(task, example_inputs=ex, input_names=["tokens", "mask"])
    assert len(batches) == 6 and batches[0][0].shape == (1, 128)
    assert np.array_equal(np.concatenate([b[0] for b in batches]), task.val.inputs[0].numpy())
    # where the train split fits, it is the one used (the validation split is not touched)
    task.train = split(20, 128)
    batches = calibration_batches(task, example_inputs=ex, input_names=["tokens", "mask"])
    assert len(batches) == 20
    assert np.array_equal(batches[0][0], task.train.inputs[0][:1].numpy())
    # neither fits: the error names the input and the shapes, as for any other source
    with pytest.raises(ShapeError, match="'tokens'.*\\[128\\].*\\[32\\]"):
        calibration_batches(task, example_inputs=(torch.zeros(1, 32, dtype=torch.int64),
                                                  torch.ones(1, 32)),
                            input_names=["tokens", "mask"])


def test_empty_data_is_an_error(tmp_path):
    with pytest.raises(DataError, match="empty"):
        calibration_batches([], example_inputs=EX, input_names=["image"])
    with pytest.raises(DataError, match="empty"):
        calibration_batches(np.zeros((0, 1, 8, 8), np.float32), example_inputs=EX,
                            input_names=["image"])
    with pytest.raises(DataError, match="does not exist"):
        calibration_batches(tmp_path / "nope.npz", example_inputs=EX, input_names=["image"])


def test_wrong_shape_names_the_input_and_spots_layout():
    with pytest.raises(ShapeError, match="'image'.*\\[1, 9, 8\\]"):
        calibration_batches(np.zeros((3, 1, 9, 8), np.float32), example_inputs=EX,
                            input_names=["image"])
    ex = (torch.zeros(1, 3, 8, 8),)
    with pytest.raises(ShapeError, match="layout"):
        calibration_batches(np.zeros((3, 8, 8, 3), np.float32), example_inputs=ex,
                            input_names=["image"])


def test_wrong_dtype_and_nan():
    with pytest.raises(ShapeError, match="dtype int64"):
        calibration_batches(np.zeros((3, 1, 8, 8), np.int64), example_inputs=EX,
                            input_names=["image"])
    bad = _data(3)
    bad[1, 0, 0, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        calibration_batches(bad, example_inputs=EX, input_names=["image"])


def test_range_warning_gives_statistics():
    reference = [_data(50)]
    with pytest.warns(CalibrationRangeWarning, match=r"\[0, 25[0-9.]*\].*mean.*0\.\.255"):
        calibration_batches(np.round(_data(20, 255.0)), example_inputs=EX, input_names=["image"],
                            reference=reference)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibration_batches(_data(20), example_inputs=EX, input_names=["image"],
                            reference=reference)


def test_quant_config_validates():
    assert QuantConfig.coerce({"method": "entropy"}).method == "entropy"
    with pytest.raises(UsageError, match="method"):
        QuantConfig(method="magic")
    with pytest.raises(UsageError, match="unknown quantization key"):
        QuantConfig.coerce({"methd": "minmax"})


def test_sensitivity_ranks_every_layer():
    model = tiny_net()
    assert quantizable_layers(model) == [("conv", "conv"), ("head", "linear")]
    rows = layer_sensitivity(model, [[a] for a in np.split(_data(8), 8)])
    assert {r["layer"] for r in rows} == {"conv", "head"}
    assert rows[0]["sqnr_db"] <= rows[1]["sqnr_db"] and rows[0]["sqnr_db"] > 10
    assert sqnr_db(np.ones(4), np.ones(4)) == float("inf")
