"""The committed *_pb2.py modules are what the .proto schema generates."""
import shutil
import subprocess
import sys

from conftest import REPO


def test_generated_modules_match_schema(tmp_path):
    protos = sorted((REPO / "frcnn_tf" / "proto").glob("*.proto"))
    (tmp_path / "frcnn_tf" / "proto").mkdir(parents=True)
    for proto in protos:
        shutil.copy(proto, tmp_path / "frcnn_tf" / "proto")
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.",
                    *[f"frcnn_tf/proto/{p.name}" for p in protos]], cwd=tmp_path, check=True)
    for proto in protos:
        generated = (tmp_path / "frcnn_tf" / "proto" / f"{proto.stem}_pb2.py").read_text()
        committed = (REPO / "frcnn_tf" / "proto" / f"{proto.stem}_pb2.py").read_text()
        assert generated == committed, f"{proto.name} changed: run scripts/regen_protos.sh"
