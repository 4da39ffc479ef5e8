"""Device profiles: every shipped file loads and round-trips; mistakes in a new file get clear errors."""
import pytest
import tomli_w
from click.testing import CliRunner

from edge_electra import dataclass_io
from edge_electra.errors import ConfigError
from edge_electra.backends import get_backend
from edge_electra.build.targets import TargetProfile, load_target, target_names, targets_command

REQUIRED = {"x86-avx2-cpu": "onnx-mobile", "x86-vnni-cpu": "openvino", "intel-igpu": "openvino",
            "intel-npu": "openvino", "android-arm64": "onnx-mobile", "ios-arm64": "onnx-mobile",
            "raspberry-pi-5": "onnx-mobile", "jetson-orin": "tensorrt", "x86-nvidia-gpu": "tensorrt"}


def good_profile() -> dict:
    return {"name": "my-board", "description": "a user's board", "backend": "onnx-mobile",
            "precisions": ["int8-dynamic", "fp32"], "buckets": [16, 32],
            "batch": {"min": 1, "opt": 1, "max": 4}, "seq": {"min": 8, "opt": 16, "max": 32},
            "runtime": {"execution_providers": ["XnnpackExecutionProvider", "CPUExecutionProvider"]}}


def write(tmp_path, data, name="my-board.toml"):
    path = tmp_path / name
    path.write_text(tomli_w.dumps(data))
    return path


def test_ships_the_required_device_classes():
    names = target_names()
    for name, backend in REQUIRED.items():
        assert name in names
        assert load_target(name).backend == backend


@pytest.mark.parametrize("name", target_names())
def test_every_profile_is_valid_and_round_trips(name, tmp_path):
    profile = load_target(name)
    assert profile.name == name
    assert set(profile.precisions) <= set(get_backend(profile.backend).precisions)
    assert profile.verified, "each profile says what was verified where"
    dataclass_io.save(profile, tmp_path / f"{name}.toml")
    assert load_target(tmp_path / f"{name}.toml") == profile


def test_device_specific_settings():
    android, ios = load_target("android-arm64"), load_target("ios-arm64")
    assert android.fixed_shapes and android.options.execution_providers[:2] == ["NnapiExecutionProvider",
                                                                                  "XnnpackExecutionProvider"]
    assert ios.fixed_shapes and ios.options.execution_providers[0] == "CoreMLExecutionProvider"
    assert "XnnpackExecutionProvider" in load_target("raspberry-pi-5").options.execution_providers
    assert load_target("intel-igpu").options.device == "GPU"
    assert load_target("intel-npu").options.device == "NPU"
    assert load_target("x86-nvidia-gpu").options.workspace_mb > 0


def test_a_user_file_by_path(tmp_path):
    profile = load_target(write(tmp_path, good_profile()))
    assert isinstance(profile, TargetProfile)
    assert profile.batch.max == 4 and profile.seq.opt == 16


@pytest.mark.parametrize("change, message", [
    ({"colour": "red"}, "unknown key(s) ['colour']"),
    ({"backend": "tflite"}, "unknown backend 'tflite'"),
    ({"precisions": ["int8-dynamic", "bf16"]}, "cannot build precision 'bf16'"),
    ({"precisions": []}, "'precisions' is empty"),
    ({"batch": {"min": 8, "opt": 4, "max": 2}}, "batch needs 1 <= min <= opt <= max"),
    ({"seq": {"min": 8, "opt": 16}}, "missing required key(s) ['max']"),
    ({"buckets": [32, 16]}, "strictly increasing"),
    ({"buckets": [16, 64]}, "buckets [64] fall outside seq [8, 32]"),
    ({"runtime": {"device": "GPU"}}, "runtime (backend onnx-mobile): unknown key(s) ['device']"),
    ({"runtime": {"execution_providers": ["nnapi"]}}, "runtime (backend onnx-mobile): 'execution_providers' must "
                                                     "list ONNX Runtime provider names"),
    ({"runtime": {"optimization_level": "max"}}, "'optimization_level' must be one of"),
    ({"runtime": {"provider_options": {"XnnpackExecutionProvider": 4}}}, "'provider_options'.XnnpackExecutionProvider"),
    ({"backend": "openvino", "precisions": ["fp32"], "runtime": {"cache": "yes"}}, "'cache' must be bool"),
    ({"backend": "openvino", "precisions": ["fp32"], "runtime": {"performance_hint": "THROUGHPUT"}},
     "unknown key(s) ['performance_hint']"),
    ({"backend": "tensorrt", "precisions": ["fp16"], "runtime": {"optimization_level": 9}},
     "runtime (backend tensorrt): 'optimization_level' must be 0-5"),
    ({"backend": "tensorrt", "precisions": ["fp16"], "runtime": {"workspace_mb": "lots"}}, "'workspace_mb' must be int"),
    ({"backend": "torch", "precisions": ["fp16"], "runtime": {}}, "backend torch cannot build precision 'fp16'"),
    ({"threads": -1}, "threads must be >= 0"),
    ({"accuracy_budget": "half"}, "'accuracy_budget' must be float"),
])
def test_mistakes_get_clear_errors(tmp_path, change, message):
    with pytest.raises(ConfigError) as error:
        load_target(write(tmp_path, {**good_profile(), **change}))
    assert message in str(error.value)


def test_unknown_name_lists_the_known_targets(tmp_path):
    with pytest.raises(ConfigError, match="unknown target 'pdp-11'.*android-arm64"):
        load_target("pdp-11")
    with pytest.raises(ConfigError, match="not found"):
        load_target(tmp_path / "missing.toml")


def test_targets_command_lists_every_profile():
    result = CliRunner().invoke(targets_command, [])
    assert result.exit_code == 0, result.output
    for name in target_names():
        assert name in result.output
    assert "backend" in result.output.splitlines()[0]


def test_targets_command_check_and_show():
    result = CliRunner().invoke(targets_command, ["--check"])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("x86-avx2-cpu"))
    assert line.rstrip().endswith("yes (CPU)")
    shown = CliRunner().invoke(targets_command, ["--show", "android-arm64"])
    assert 'backend = "onnx-mobile"' in shown.output and "NnapiExecutionProvider" in shown.output
