"""Failure policy of job files: hostile or broken YAML is one short ConfigError line, never a flood or a traceback."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcblend.config import apply_overrides, default_job, job_from_dict, load_job
from hpcblend.errors import ConfigError
from hpcblend.io.yaml_files import quote_value

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path, text, name="job.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _error(path, overrides=()):
    """The ConfigError message of load_job(path), checked to be one bounded line."""
    with pytest.raises(ConfigError) as info:
        load_job(str(path), overrides)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 400, msg
    assert msg.startswith(f"{path}: "), msg
    return msg


def _billion_laughs(levels=9):
    """``name:`` is a list whose items are 9 levels of 9-fold aliases (9**9 "lol"s expanded)."""
    lines = ["input:", "  kind: demo", "name:"]
    lines.append("  - &l0 [" + ", ".join(['"lol"'] * 9) + "]")
    for i in range(1, levels):
        lines.append(f"  - &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_before_anything_is_expanded(tmp_path):
    path = _write(tmp_path, _billion_laughs())
    t0 = time.perf_counter()
    msg = _error(path)
    assert time.perf_counter() - t0 < 5.0
    assert msg == f"{path}: line 4: YAML aliases/anchors are not allowed in job files (anchor '&l0', column 5)"
    assert "lol" not in msg


def test_alias_bomb_through_the_cli_is_a_short_error(tmp_path):
    path = _write(tmp_path, _billion_laughs())
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-m", "hpcblend.cli", "run", str(path)], capture_output=True,
                          timeout=120, cwd=tmp_path, env=env)
    stderr = proc.stderr.decode("utf-8", "replace")
    assert proc.returncode == 2, stderr
    assert len(stderr) < 2000 and "Traceback" not in stderr
    assert stderr.startswith("hpcblend: error: "), stderr
    assert "line 4: YAML aliases/anchors are not allowed in job files" in stderr


def test_anchor_without_alias_is_refused(tmp_path):
    path = _write(tmp_path, "input:\n  kind: demo\nname: &n my-job\n")
    msg = _error(path)
    assert "line 3: YAML aliases/anchors are not allowed in job files" in msg and "'&n'" in msg


def test_alias_without_anchor_is_refused(tmp_path):
    path = _write(tmp_path, "input:\n  kind: demo\n\nname: *undefined\n")
    assert "line 4: YAML aliases/anchors are not allowed in job files" in _error(path)


def test_duplicate_top_level_section_is_refused(tmp_path):
    path = _write(tmp_path, "input:\n  kind: demo\ndeblend:\n  max_iter: 3\nname: x\n\ndeblend:\n  max_iter: 4\n")
    assert _error(path) == f"{path}: line 7: duplicate key 'deblend' (first at line 3)"


def test_duplicate_nested_key_is_refused(tmp_path):
    path = _write(tmp_path, "input:\n  kind: demo\ndeblend:\n  max_iter: 3\n  max_iter: 4\n")
    assert _error(path) == f"{path}: line 5: duplicate key 'max_iter' (first at line 4)"
    flow = _write(tmp_path, "input: {kind: demo, kind: blends}\n", name="flow.yaml")
    assert "line 1: duplicate key 'kind'" in _error(flow)


@pytest.mark.parametrize("data, key", [
    ({"input": {"kind": "demo"}, "name": ["z" * 10_000_000]}, "'name'"),
    ({"input": {"kind": "demo"}, "deblend": {"optimizer": "y" * 10_000_000}}, "'deblend.optimizer'"),
    ({"input": {"kind": "demo"}, "x" * 10_000_000: 1}, "unknown key 'xxx"),
    ({"input": {"kind": "demo"}, "deblend": {"bad_mask_planes": ["BAD", "Q" * 10_000_000]}}, "bad_mask_planes"),
    ({"input": {"kind": "demo"}, "measure": {"aperture_radii": [-1.0] * 1_000_000}}, "aperture_radii"),
    ({"input": {"kind": "demo"}, "run": {"schedule": list(range(1_000_000))}}, "'run.schedule'"),
])
def test_huge_values_are_cut_in_messages(data, key):
    with pytest.raises(ConfigError) as info:
        job_from_dict(data, source="big.yaml")
    msg = str(info.value)
    assert msg.startswith("big.yaml: ") and key in msg and "\n" not in msg
    assert len(msg) <= 400, msg[:500]
    assert "characters)" in msg


def test_long_value_in_a_job_file_is_cut(tmp_path):
    path = _write(tmp_path, "input:\n  kind: demo\nname: [" + "w" * 1_000_000 + "]\n")
    msg = _error(path)
    assert "key 'name': expected a string" in msg and "(1000004 characters)" in msg


def test_quote_truncates_with_length_and_keeps_short_reprs():
    assert quote_value("deblend") == "'deblend'"
    assert quote_value([1, 2.5, None]) == "[1, 2.5, None]"
    long = quote_value("a" * 5000)
    assert long.startswith("'aaa") and long.endswith("... (5000 characters)") and len(long) < 230
    assert quote_value("é" * 10, limit=5) == "'éééé... (10 characters)"
    assert quote_value(10 ** 5000).startswith("<int")  # repr beyond Python's digit limit does not raise


def test_set_override_with_anchor_or_duplicate_or_tag_is_refused():
    for item, expected in [
        ("name=[&a [lol, lol], *a, *a]", "YAML aliases/anchors are not allowed in job files"),
        ("deblend={max_iter: 3, max_iter: 4}", "duplicate key 'max_iter'"),
        ("name=!!python/object/apply:os.system [echo hi]", "YAML tag '!!python/object/apply:os.system'"),
        ("deblend={1: 2}", "key 1 is not a string"),
    ]:
        with pytest.raises(ConfigError) as info:
            apply_overrides({}, [item])
        msg = str(info.value)
        assert msg.startswith("--set '") and expected in msg and "\n" not in msg, msg
    # a bare alias is not YAML (it names no anchor): kept as text, as before, never expanded
    assert apply_overrides({}, ["input.paths=*npz"]) == {"input": {"paths": "*npz"}}
    assert apply_overrides({}, ["input.paths=*.npz"]) == {"input": {"paths": "*.npz"}}
    with pytest.raises(ConfigError, match=r"\.\.\. \(100005 characters\): expected section.key=value"):
        apply_overrides({}, ["x" * 100_005])


def test_exponent_without_dot_is_a_number():
    """PyYAML reads ``1e-4`` as a string (YAML 1.1); job files and --set mean the float, as YAML 1.2 does."""
    assert apply_overrides({}, ["deblend.e_rel=1e-4"]) == {"deblend": {"e_rel": 1e-4}}
    job = job_from_dict(apply_overrides({"input": {"kind": "demo"}}, ["deblend.e_rel=1E-5", "deblend.psf_regularization=+2e-6"]))
    assert job.deblend.e_rel == 1e-5 and job.deblend.psf_regularization == 2e-6
    # not a number: stays text, so a number field still says what it got
    assert apply_overrides({}, ["name=1e"]) == {"name": "1e"}
    with pytest.raises(ConfigError, match="key 'deblend.e_rel': expected a number"):
        job_from_dict(apply_overrides({"input": {"kind": "demo"}}, ["deblend.e_rel=e-4"]))


def test_set_override_with_anchor_through_load_job(tmp_path):
    path = _write(tmp_path, "input:\n  kind: demo\n")
    with pytest.raises(ConfigError, match="YAML aliases/anchors are not allowed"):
        load_job(str(path), ("name=&n x",))
    assert load_job(str(path), ("deblend.max_iter=7",)).deblend.max_iter == 7


def test_python_tags_are_refused_and_never_run(tmp_path):
    marker = tmp_path / "pwned"
    path = _write(tmp_path, f"input:\n  kind: demo\nname: !!python/object/apply:os.system ['touch {marker}']\n")
    msg = _error(path)
    assert msg == f"{path}: line 3: YAML tag '!!python/object/apply:os.system' is not allowed in job files"
    assert not marker.exists()
    local = _write(tmp_path, "name: !custom x\n", name="local.yaml")
    assert "line 1: YAML tag '!custom' is not allowed" in _error(local)


def test_non_mapping_top_level_is_refused(tmp_path):
    path = _write(tmp_path, "- input\n- deblend\n")
    assert _error(path) == f"{path}: key '<top>': expected a mapping, got ['input', 'deblend']"
    # with overrides too (used to be an AttributeError traceback)
    assert "expected a mapping" in _error(path, ("deblend.max_iter=3",))
    scalar = _write(tmp_path, "just a string\n", name="scalar.yaml")
    assert "expected a mapping, got 'just a string'" in _error(scalar)


def test_non_string_and_merge_keys_are_refused(tmp_path):
    path = _write(tmp_path, "input:\n  kind: demo\nyes: 1\n")
    assert _error(path) == f"{path}: line 3: key True is not a string (quote it)"
    nested = _write(tmp_path, "deblend:\n  1: 2\n", name="nested.yaml")
    assert "line 2: key 1 is not a string" in _error(nested)
    merge = _write(tmp_path, "<<: {name: x}\n", name="merge.yaml")
    assert "line 1: YAML merge keys ('<<') are not allowed" in _error(merge)


def test_unreadable_values_are_config_errors(tmp_path):
    big = _write(tmp_path, "deblend:\n  max_iter: " + "1" * 5000 + "\n", name="big.yaml")
    assert "line 2: cannot read value" in _error(big)
    date = _write(tmp_path, "name: 2024-13-45\n", name="date.yaml")
    assert "line 1: cannot read value: month must be in 1..12" in _error(date)
    for value in (".inf", ".nan", "3.5"):
        path = _write(tmp_path, f"input:\n  kind: demo\ndeblend:\n  max_iter: {value}\n", name="f.yaml")
        assert "key 'deblend.max_iter': expected an integer" in _error(path)
    deep = _write(tmp_path, "name: " + "[" * 100_000 + "\n", name="deep.yaml")
    assert "YAML nested too deeply" in _error(deep)


def test_bad_files_are_one_line_errors(tmp_path):
    syntax = _write(tmp_path, "input:\n  kind: demo\nname: [a, b\n")
    assert "not valid YAML" in _error(syntax)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\n")
    assert "not a UTF-8 text file" in _error(binary)
    assert "job file not found" in _error(tmp_path / "missing.yaml")
    assert "cannot read job file" in _error(tmp_path)


def test_valid_jobs_still_load(tmp_path):
    path = _write(tmp_path, "name: ok\ninput:\n  kind: demo\n  bands: [g, r]\ndeblend:\n  max_iter: 50\n")
    job = load_job(str(path), ("run.schedule=file",))
    assert (job.name, job.input.bands, job.deblend.max_iter, job.run.schedule) == ("ok", ("g", "r"), 50, "file")
    assert job.base_dir == str(tmp_path)
    assert load_job(str(_write(tmp_path, "", name="empty.yaml")), ("input.kind=demo",)).input.kind == "demo"
    for name in ("demo.yaml", "hsc_blends.yaml", "tract_sim.yaml"):
        assert load_job(str(REPO / "jobs" / name)).name
    job = default_job(("deblend.max_iter=9",))
    assert job.name == "demo-tract" and job.deblend.max_iter == 9 and job.input.kind == "tract"


def test_every_input_kind_has_a_work_source():
    """``input.kind`` accepts exactly the kinds the work-source registry can run."""
    from hpcblend.config import INPUT_KINDS
    from hpcblend.units.source import SOURCES

    assert set(INPUT_KINDS) == set(SOURCES)


def test_other_yaml_files_use_the_same_strict_reader(tmp_path):
    """:func:`read_yaml_file` names the file's role; the strict loader applies to every YAML file read."""
    from hpcblend.io.yaml_files import read_yaml_file

    with pytest.raises(ConfigError, match=r"t\.yaml: thresholds file not found$"):
        read_yaml_file(str(tmp_path / "t.yaml"), what="thresholds file")
    path = _write(tmp_path, "a: &x 1\nb: *x\n", name="t.yaml")
    with pytest.raises(ConfigError, match=r"t\.yaml: line 1: YAML aliases/anchors are not allowed"):
        read_yaml_file(str(path), what="thresholds file")
    assert read_yaml_file(str(_write(tmp_path, "a: 1\n", name="ok.yaml"))) == {"a": 1}


def test_keep_freed_memory_setting():
    """run.keep_freed_memory: glibc keeps freed memory (mallopt accepted) when on; nothing is touched when off."""
    import sys

    from hpcblend.parallel.allocator import keep_freed_memory

    assert keep_freed_memory(False) is False
    if sys.platform.startswith("linux"):
        assert keep_freed_memory(True) is True  # glibc: both mallopt calls accepted
    job = job_from_dict(apply_overrides({"input": {"kind": "demo"}}, ["run.keep_freed_memory=false"]))
    assert job.run.keep_freed_memory is False
    with pytest.raises(ConfigError, match="keep_freed_memory"):
        job_from_dict(apply_overrides({"input": {"kind": "demo"}}, ["run.keep_freed_memory=[1]"]))


def test_negative_morphology_thresholds_name_their_key():
    for key in ("deblend.bg_thresh", "deblend.init_bg_thresh"):
        with pytest.raises(ConfigError, match=f"key '{key}': must be >= 0"):
            default_job((f"{key}=-1",))
    job = default_job(("deblend.init_bg_thresh=2.0",))
    assert job.deblend.init_bg_thresh == 2.0 and job.deblend.bg_thresh == 0.5
