"""tools/check_hf_export_venv.sh: valid bash, and a folder that is no export stops it with one
line before any venv is built. (The check itself installs packages, so it is run by hand.)"""

import os
import subprocess

SCRIPT = os.path.join(os.path.dirname(__file__), os.pardir, os.pardir, "tools",
                      "check_hf_export_venv.sh")


def test_script_is_valid_bash():
    subprocess.run(["bash", "-n", SCRIPT], check=True)


def test_a_folder_without_config_stops_early(tmp_path):
    venv = tmp_path / "venv"
    result = subprocess.run(["bash", SCRIPT, str(tmp_path)], capture_output=True, text=True,
                            env=dict(os.environ, VENV_DIR=str(venv)), timeout=60)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path}/config.json not found"
    assert not venv.exists()
