"""Readers of safetensors, torch.save zip and Keras HDF5 files: exact values, and one clear line for
every damaged file."""
import io
import pickle
import zipfile

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import resnet_reference as ref
from frcnn_tf.errors import FrcnnError
from frcnn_tf.tensor_files import read_keras_h5, read_safetensors, read_torch_zip, read_weights

STATE = {"conv1.weight": np.arange(2 * 3 * 2 * 2, dtype=np.float32).reshape(2, 3, 2, 2) - 5.5,
         "bn1.weight": np.array([1.5, -2.0], np.float32), "bn1.bias": np.array([0.25, 0.5], np.float32),
         "bn1.running_mean": np.array([3.0, 4.0], np.float32), "bn1.running_var": np.array([0.5, 2.0], np.float32),
         "bn1.num_batches_tracked": np.array(7, np.int64), "fc.bias": np.array([1e-3, 2.0, -3.5])}


def _same(found, expected):
    assert list(found) == list(expected)
    for name, value in expected.items():
        assert found[name].dtype == value.dtype and found[name].shape == value.shape, name
        np.testing.assert_array_equal(found[name], value)


def _error_line(path_part, call, *args):
    with pytest.raises(FrcnnError) as caught:
        call(*args)
    message = str(caught.value)
    assert "\n" not in message and path_part in message
    return message


def test_safetensors_and_torch_zip_round_trip(tmp_path):
    (tmp_path / "w.safetensors").write_bytes(ref.safetensors_bytes(STATE, {"format": "pt"}))
    (tmp_path / "w.pth").write_bytes(ref.torch_zip_bytes(STATE))
    assert read_weights(str(tmp_path / "w.safetensors"))[0] == "safetensors"
    _same(read_weights(str(tmp_path / "w.safetensors"))[1], STATE)
    assert read_weights(str(tmp_path / "w.pth"))[0] == "torch"
    _same(read_weights(str(tmp_path / "w.pth"))[1], STATE)  # strided conv kernel, BN vectors at offsets


PERMUTED = np.arange(24, dtype=np.float32).reshape(2, 3, 4).transpose(2, 0, 1)


def test_a_file_written_by_torch(tmp_path):
    """Only where torch is installed (it is not a dependency)."""
    torch = pytest.importorskip("torch")
    state = {name: torch.from_numpy(value.copy()) for name, value in STATE.items()}
    state["permuted"] = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4).permute(2, 0, 1)  # strided
    torch.save(state, tmp_path / "t.pth")
    _same(read_torch_zip(str(tmp_path / "t.pth")), {**STATE, "permuted": PERMUTED})


def test_a_file_written_by_safetensors(tmp_path):
    """Only where the safetensors package is installed (it is not a dependency)."""
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    expected = {**STATE, "permuted": np.ascontiguousarray(PERMUTED)}
    safetensors_numpy.save_file(expected, str(tmp_path / "t.safetensors"))
    found = read_safetensors(str(tmp_path / "t.safetensors"))
    _same({name: found[name] for name in expected}, expected)  # the writer sorts the names


def test_half_precision_by_hand(tmp_path):
    # bfloat16 is the upper half of a float32: 0x3F80 = 1.0, 0xC020 = -2.5; float16 0x3C00 = 1.0.
    header = (b'{"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},'
              b'"b":{"dtype":"F16","shape":[1],"data_offsets":[4,6]}}')
    data = len(header).to_bytes(8, "little") + header + bytes([0x80, 0x3F, 0x20, 0xC0, 0x00, 0x3C])
    (tmp_path / "h.safetensors").write_bytes(data)
    found = read_safetensors(str(tmp_path / "h.safetensors"))
    assert found["a"].dtype == np.float32 and found["a"].tolist() == [1.0, -2.5]
    assert found["b"].dtype == np.float16 and found["b"].tolist() == [1.0]


def test_keras_h5_reads_weight_names(tmp_path):
    with h5py.File(tmp_path / "k.h5", "w") as h5:
        h5.attrs["layer_names"] = [b"conv1_pad", b"conv1_conv"]
        h5.create_group("conv1_pad").attrs["weight_names"] = []
        group = h5.create_group("conv1_conv")
        group.attrs["weight_names"] = [b"conv1_conv/kernel:0", b"conv1_conv/bias:0"]
        group.create_dataset("conv1_conv/kernel:0", data=np.ones((7, 7, 3, 64), np.float32))
        group.create_dataset("conv1_conv/bias:0", data=np.zeros(64, np.float32))
    found = read_keras_h5(str(tmp_path / "k.h5"))
    assert list(found) == ["conv1_conv/kernel:0", "conv1_conv/bias:0"] and found["conv1_conv/kernel:0"].shape == (
        7, 7, 3, 64)


@pytest.mark.parametrize("data, problem", [
    (b"", "0 bytes, shorter than the 8-byte header length"),
    ((10 ** 6).to_bytes(8, "little") + b"{}", "the header says it is 1000000 bytes, the file has 2"),
    ((3).to_bytes(8, "little") + b"{x}", "the header is not JSON"),
    ((2).to_bytes(8, "little") + b"[]", "the header is not a JSON object"),
])
def test_damaged_safetensors_headers(tmp_path, data, problem):
    (tmp_path / "bad.safetensors").write_bytes(data)
    message = _error_line("bad.safetensors", read_safetensors, str(tmp_path / "bad.safetensors"))
    assert problem in message and "damaged or not a safetensors file" in message


def test_safetensors_entries_must_fit_the_data(tmp_path):
    for entry, problem in [('{"dtype":"F32","shape":[3],"data_offsets":[0,8]}', "do not hold F32 [3] (12 bytes)"),
                           ('{"dtype":"Q4","shape":[1],"data_offsets":[0,4]}', "is not {dtype (F64/F32"),
                           ('{"dtype":"F32","shape":[1],"data_offsets":[8,12]}', "bytes 8-12 of 8 do not hold")]:
        header = f'{{"t":{entry}}}'.encode()
        (tmp_path / "e.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
        assert problem in _error_line("e.safetensors", read_safetensors, str(tmp_path / "e.safetensors"))


def _zip_with_pickle(pickled):
    return ref.torch_zip_bytes(STATE, pickled=pickled)


def test_torch_zip_refuses_other_classes(tmp_path):
    import os

    (tmp_path / "evil.pth").write_bytes(_zip_with_pickle(pickle.dumps(os.system, protocol=2)))
    message = _error_line("evil.pth", read_torch_zip, str(tmp_path / "evil.pth"))
    assert "data.pkl asks for posix.system" in message or "data.pkl asks for os.system" in message
    (tmp_path / "list.pth").write_bytes(_zip_with_pickle(pickle.dumps([1, 2], protocol=2)))
    assert "holds no state dict" in _error_line("list.pth", read_torch_zip, str(tmp_path / "list.pth"))
    (tmp_path / "p5.pth").write_bytes(_zip_with_pickle(pickle.dumps(bytearray(b"x"), protocol=5)))
    assert "uses pickle protocol 5 (BYTEARRAY8)" in _error_line("p5.pth", read_torch_zip, str(tmp_path / "p5.pth"))
    # PROTO 2, EMPTY_DICT, LONG_BINPUT 2**31 - 1, STOP: well formed, but the unpickler's memo would take 16 GB
    (tmp_path / "memo.pth").write_bytes(_zip_with_pickle(b"\x80\x02}r\xff\xff\xff\x7f."))
    assert "memo index 2147483647 in a pickle of 4 opcodes" in _error_line("memo.pth", read_torch_zip,
                                                                          str(tmp_path / "memo.pth"))


def test_torch_zip_damage(tmp_path):
    good = ref.torch_zip_bytes(STATE)
    (tmp_path / "cut.pth").write_bytes(good[: len(good) // 2])
    assert "damaged" in _error_line("cut.pth", read_weights, str(tmp_path / "cut.pth"))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("archive/version", "3\n")
    (tmp_path / "empty.pth").write_bytes(out.getvalue())
    assert "0 data.pkl records" in _error_line("empty.pth", read_torch_zip, str(tmp_path / "empty.pth"))
    # a storage record missing from the archive
    with zipfile.ZipFile(io.BytesIO(good)) as source, zipfile.ZipFile(tmp_path / "gap.pth", "w") as target:
        for item in source.infolist():
            if item.filename != "archive/data/0":
                target.writestr(item, source.read(item))
    assert "cannot read the checkpoint (KeyError" in _error_line("gap.pth", read_torch_zip, str(tmp_path / "gap.pth"))


def test_other_files_are_named(tmp_path):
    (tmp_path / "legacy.pth").write_bytes(b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.")
    assert "format before 1.6" in _error_line("legacy.pth", read_weights, str(tmp_path / "legacy.pth"))
    (tmp_path / "text.pth").write_text("hello world")
    assert "not a weight file frcnn_tf reads" in _error_line("text.pth", read_weights, str(tmp_path / "text.pth"))
    assert "cannot read the weights" in _error_line("missing.pth", read_weights, str(tmp_path / "missing.pth"))


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _read_or_one_line(path):
    """The reader either returns tensors or raises one FrcnnError line naming the file."""
    try:
        read_weights(path)
    except FrcnnError as err:
        assert "\n" not in str(err) and path in str(err)


@FUZZ
@given(cut=st.integers(min_value=0, max_value=2000), kind=st.sampled_from(["safetensors", "pth"]))
def test_truncated_files_give_one_line(tmp_path, cut, kind):
    data = ref.safetensors_bytes(STATE) if kind == "safetensors" else ref.torch_zip_bytes(STATE)
    path = str(tmp_path / f"t.{kind}")
    with open(path, "wb") as handle:
        handle.write(data[: min(cut, len(data) - 1)])
    with pytest.raises(FrcnnError) as caught:
        read_weights(path)
    assert "\n" not in str(caught.value) and path in str(caught.value)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), min_size=1,
                      max_size=4), kind=st.sampled_from(["safetensors", "pickle"]))
def test_corrupted_bytes_give_tensors_or_one_line(tmp_path, flips, kind):
    """Byte flips in a safetensors file, or in the pickle of a torch zip (the archive's CRCs would catch
    flips elsewhere): the readers return or raise one line, never another exception."""
    buffer = io.BytesIO()
    ref.TorchPickler(buffer).dump({name: ref.TensorRef(ref.StorageRef("FloatStorage", "0", 4), 0, (2,), (1,))
                                   for name in ("a", "b")})
    data = bytearray(ref.safetensors_bytes(STATE) if kind == "safetensors" else buffer.getvalue())
    for position, value in flips:
        data[position % len(data)] ^= value
    if kind == "pickle":
        out = io.BytesIO()
        with zipfile.ZipFile(out, "w") as archive:
            archive.writestr("archive/data.pkl", bytes(data))
            archive.writestr("archive/data/0", np.arange(4, dtype=np.float32).tobytes())
        data = out.getvalue()
    path = str(tmp_path / "c.bin")
    with open(path, "wb") as handle:
        handle.write(data)
    _read_or_one_line(path)
