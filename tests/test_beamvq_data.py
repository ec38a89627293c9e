"""Field files users have (.npy, .npz, .h5 of [N, T, C, H, W]), the errors that name the file and the shape, and
windows cut from trajectories."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

from seraphim.algorithms.beamvq.data import FieldsError, FieldsSpec, load_fields, open_fields, windows
from seraphim.algorithms.beamvq.job import BeamVQSpec

SHAPE = "one float array [N, T, C, H, W] (trajectories, frames, channels, height, width; H = W)"


def test_npy_npz_and_h5_files_load_to_the_same_array(tmp_path):
    data = np.random.default_rng(0).normal(size=(3, 5, 2, 8, 8)).astype(np.float32)
    np.save(tmp_path / "f.npy", data)
    np.savez(tmp_path / "f.npz", velocity=data, other=data[:1])
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("velocity", data=data.astype(np.float64))
    np.testing.assert_array_equal(load_fields(tmp_path / "f.npy"), data)
    np.testing.assert_array_equal(load_fields(tmp_path / "f.npz", "velocity"), data)
    np.testing.assert_array_equal(load_fields(tmp_path / "f.h5"), data)  # its only dataset
    fields = open_fields(FieldsSpec(path=str(tmp_path / "f.h5"), layout="velocity"))
    assert fields.layout == "velocity" and fields.data.dtype == np.float32


def test_wrong_files_and_shapes_are_refused_with_the_file_and_the_expected_shape(tmp_path):
    np.save(tmp_path / "rank4.npy", np.zeros((3, 5, 8, 8), np.float32))
    np.save(tmp_path / "oblong.npy", np.zeros((3, 5, 2, 8, 6), np.float32))
    (tmp_path / "fields.csv").write_text("1,2,3\n")
    (tmp_path / "broken.npy").write_bytes(b"not a numpy file")
    np.savez(tmp_path / "two.npz", a=np.zeros((1, 2, 1, 4, 4)), b=np.zeros((1, 2, 1, 4, 4)))
    cases = [
        ("rank4.npy", None, rf"rank4.npy: array of shape \[3, 5, 8, 8\] \(rank 4\); expected {re.escape(SHAPE)}"),
        ("oblong.npy", None, rf"oblong.npy: grid 8x6 is not square; expected {re.escape(SHAPE)}"),
        ("fields.csv", None, r"fields.csv: unsupported file type '.csv'; expected .* in a .npy, .npz, .h5, .hdf5 file"),
        ("broken.npy", None, rf"broken.npy: cannot be read as .npy .*; expected {re.escape(SHAPE)}"),
        ("missing.h5", None, rf"missing.h5: no such file; expected {re.escape(SHAPE)}"),
        ("two.npz", None, r"two.npz: holds arrays \['a', 'b'\]; set fields.key to the one with"),
        ("two.npz", "c", r"two.npz: has no array 'c'; it holds \['a', 'b'\]"),
    ]
    for name, key, message in cases:
        with pytest.raises(FieldsError, match=message):
            load_fields(tmp_path / name, key)
    with pytest.raises(FieldsError, match=r"two.npz: 1 channels, but layout 'shallow_water' has 3; expected "
                                          r"\[N, T, 3, H, W\]"):
        open_fields(FieldsSpec(path=str(tmp_path / "two.npz"), key="a", layout="shallow_water"))


def test_windows_pair_every_input_with_the_frames_after_it():
    trajectories = np.arange(2 * 7, dtype=np.float32).reshape(2, 7, 1, 1, 1) * np.ones((1, 1, 1, 2, 2), np.float32)
    x, future = windows(trajectories, t_in=2, t_out=2, steps=2)
    assert x.shape == (4, 2, 1, 2, 2) and future.shape == (4, 4, 1, 2, 2)
    np.testing.assert_array_equal(x[:, :, 0, 0, 0], [[0, 1], [1, 2], [7, 8], [8, 9]])
    np.testing.assert_array_equal(future[1, :, 0, 0, 0], [3, 4, 5, 6])
    with pytest.raises(FieldsError, match="shorter than one window of 2 input and 3 x 2 output frames"):
        windows(trajectories, 2, 2, 3)


def test_job_specs_are_checked_before_anything_runs():
    generate = {"generate": {"kind": "shallow_water"}}
    with pytest.raises(ValueError, match="give exactly one of fields.generate, fields.path"):
        BeamVQSpec.model_validate({"fields": {**generate, "path": "x.npy", "layout": "velocity"}})
    with pytest.raises(ValueError, match="fields.layout is required with fields.path"):
        BeamVQSpec.model_validate({"fields": {"path": "x.npy"}})
    with pytest.raises(ValueError, match=r"beam.top_k \(9\) cannot exceed codebank.codes \(8\)"):
        BeamVQSpec.model_validate({"fields": generate, "codebank": {"codes": 8}, "beam": {"top_k": 9}})
    with pytest.raises(ValueError, match=r"backbone.sizes \['depth'\] are not sizes of fno"):
        BeamVQSpec.model_validate({"fields": generate, "backbone": {"name": "fno", "sizes": {"depth": 3}}})
