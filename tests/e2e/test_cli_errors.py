"""Bad input at the command line gets one clear line naming the culprit, exit status 2, no traceback."""

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import lmforge_cli


def _lmforge(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_unknown_set_key_is_named(tmp_path):
    r = _lmforge("run", "lifecycle", "--home", str(tmp_path), "--set", "pretrain.stepz=3", cwd=tmp_path)
    assert r.returncode == 2
    assert "unknown key 'pretrain.stepz' (did you mean 'steps'?)" in r.stderr
    assert "Traceback" not in r.stderr


def test_missing_source_path_is_named(tmp_path):
    r = _lmforge(
        "run", "lifecycle", "--home", str(tmp_path), "--set", f"curate.source={tmp_path}/nope.txt", cwd=tmp_path
    )
    assert r.returncode == 2
    assert f"{tmp_path}/nope.txt: no such file or directory" in r.stderr


def test_unknown_profile_lists_known_profiles(tmp_path):
    r = _lmforge("config", "--profile", "huge", cwd=tmp_path)
    assert r.returncode == 2 and "known profiles" in r.stderr


def test_config_keys_documents_every_key(tmp_path):
    r = _lmforge("config", "--keys", cwd=tmp_path)
    assert r.returncode == 0 and "pretrain.steps (int" in r.stdout


def _emptied_corpus(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("short\n\nalso short\n")
    return corpus


def test_corpus_emptied_by_filters_fails_naming_step_file_and_filter(tmp_path):
    corpus = _emptied_corpus(tmp_path)
    r = _lmforge("run", "lifecycle", "--home", str(tmp_path / "home"), "--set", f"curate.source={corpus}", cwd=tmp_path)
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: step curate failed: {corpus}: no records left after curation")
    assert "'length' (too_short: 2)" in last and "curate.min_chars" in last
    # On a pipe: plain lines, the failed step with its reason, and where its full log is.
    lines = r.stdout.splitlines()
    assert re.search(r"✓ start lineage\s+done in", r.stdout)
    [failed] = [line for line in lines if "✗ curate pretrain corpus" in line]
    assert "FAILED after " in failed and f"{corpus}: no records left after curation" in failed
    log = Path(re.search(r"log\s+(\S+curate\.log)$", r.stdout, re.M).group(1))
    assert "Traceback" in log.read_text() and "\x1b[" not in r.stdout


def test_a_failing_run_in_a_terminal_shows_the_failed_step_its_reason_and_log(tmp_path):
    corpus = _emptied_corpus(tmp_path)
    home = tmp_path / "home"
    r = lmforge_cli("run", "lifecycle", "--home", str(home), "--set", f"curate.source={corpus}", tty=True, cwd=tmp_path)
    assert r.returncode == 2
    screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", r.stdout).replace("\r", "")
    final = screen[screen.rindex("\n", 0, screen.rindex("start lineage")) + 1 :]  # the live table's last frame
    assert re.search(r"✗ curate pretrain corpus\s+FAILED after [0-9.]+s: \S*tiny.txt: no records left", final)
    assert re.search(r"· pretrain\s+waiting", final)
    assert f"{home}/logs/lifecycle-" in final and "curate.log" in final
    assert "error: step curate failed:" in final


def test_compile_for_a_profile_without_the_cluster_overlay_names_the_keys(tmp_path):
    r = _lmforge("compile", "--profile", "tiny", "--output-dir", str(tmp_path), cwd=tmp_path)
    assert r.returncode == 2
    assert "profile 'tiny' cannot run as a compiled pipeline" in r.stderr and "storage.uri" in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_config_help_explains_profile_overlays(tmp_path):
    r = _lmforge("config", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "1b+cluster" in r.stdout and "left to right" in r.stdout
