"""README.md's front page, run as written.

The front page promises that, from a fresh clone, its two set-up commands and then every later
command work as written, in order, and that `make pretrain` prints the losses of its log
excerpt. The slow tests check exactly that on a copy of this checkout (its tracked and
untracked-but-not-ignored files, as a clone after `git add` would hold):

- set-up: `make pretrain`, with make's `-o` marking the install stamp as up to date: the
  virtual environment is the one running these tests (installed by the same Makefile), linked
  as `./.venv`, so nothing is installed or reinstalled. `make test` is the default suite
  itself and is not rerun here.
- then every ```bash and ```python block after the set-up block, in README order, in one bash
  session (a python block is fed to `python -` of the activated environment), with `set -e`.

The fast tests check the README's shape that the slow ones rely on.
"""

import os
import re
import shutil
import subprocess
import sys

import pytest

REPO_ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir, os.pardir))
README = os.path.join(REPO_ROOT, "README.md")
SETUP_COMMANDS = ["make pretrain", "make test"]
DEFAULT_RUN_LOG = os.path.join("runs", "ponder-tiny-k1", "train.log")
# Variables the launcher reads, and where processes find code: a fresh shell has none of them.
LAUNCHER_VARIABLES = (
    "GPUS_PER_NODE", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "PRESET", "K",
    "DATA_PATH", "SPLIT", "TP", "PP", "TRAIN_ITERS", "MICRO_BATCH", "GLOBAL_BATCH", "LR",
    "RUN_DIR", "SAVE_DIR", "EVAL_INTERVAL", "EVAL_ITERS", "LOG_INTERVAL", "SAVE_INTERVAL",
    "PYTHON", "DRY_RUN", "LOCAL_RANK", "RANK", "WORLD_SIZE", "OMP_NUM_THREADS", "PYTHONPATH",
    "VIRTUAL_ENV")
SESSION_TIMEOUT_S = 3 * 3600  # a busy 2-core machine; the default run alone takes minutes

FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.S | re.M)
VALIDATION_LOSS = re.compile(r"validation loss at iteration (\d+) \| lm loss value: (\S+) \|")
TRAINING_LOSS = re.compile(r"\] iteration +(\d+)/ *\d+ \|.*? \| lm loss: (\S+) \|")


def fenced_blocks(text):
    """(language, body) of every fenced block, in order."""
    return [(match.group(1), match.group(2)) for match in FENCE.finditer(text)]


def readme_blocks():
    with open(README) as handle:
        return fenced_blocks(handle.read())


def command_lines(body):
    """The shell lines of a block, comments and blank lines dropped."""
    lines = (line.split("#", 1)[0].strip() for line in body.splitlines())
    return [line for line in lines if line]


def setup_block_index(blocks):
    for index, (language, body) in enumerate(blocks):
        if language == "bash" and command_lines(body) == SETUP_COMMANDS:
            return index
    raise AssertionError(f"README.md has no ```bash block holding exactly {SETUP_COMMANDS}")


def later_commands(blocks):
    """The blocks after the set-up block as one bash script, textually the README's."""
    parts = []
    for language, body in blocks[setup_block_index(blocks) + 1:]:
        if language == "bash":
            parts.append(body)
        elif language == "python":
            parts.append(f"python - <<'README_PYTHON_BLOCK'\n{body}README_PYTHON_BLOCK\n")
    return parts


def logged_losses(text):
    """{("validation" | "training", iteration): the loss as printed} of a training log."""
    losses = {("validation", int(i)): value for i, value in VALIDATION_LOSS.findall(text)}
    losses.update({("training", int(i)): value for i, value in TRAINING_LOSS.findall(text)})
    return losses


def readme_excerpt_losses(blocks):
    excerpts = [body for language, body in blocks if not language and VALIDATION_LOSS.search(body)]
    assert len(excerpts) == 1, "README.md should hold one log excerpt of the default run"
    return logged_losses(excerpts[0])


def makefile_install_stamp():
    with open(os.path.join(REPO_ROOT, "Makefile")) as handle:
        text = handle.read()
    venv = re.search(r"^VENV \?= (\S+)$", text, re.M).group(1)
    stamp = re.search(r"^STAMP := \$\(VENV\)/(\S+)$", text, re.M).group(1)
    return venv, f"{venv}/{stamp}"


# ---- fast: the shape the slow tests rely on ----------------------------------------------------

def test_readme_has_the_setup_block_and_commands_after_it():
    blocks = readme_blocks()
    assert blocks[setup_block_index(blocks)][0] == "bash"
    commands = "".join(later_commands(blocks))
    assert commands.startswith(". .venv/bin/activate\n"), \
        "the first command after the set-up must activate ./.venv: the later ones say `python`"
    assert "tools/generate.py" in commands and "tools/evaluate.py" in commands


def test_readme_excerpt_starts_at_the_first_logged_losses():
    losses = readme_excerpt_losses(readme_blocks())
    assert ("validation", 0) in losses and ("training", 10) in losses, losses


def test_readme_states_the_test_commands():
    with open(README) as handle:
        text = handle.read()
    assert re.search(r"^make test\b", text, re.M) and "`make test-slow`" in text


def test_loss_parser_reads_megatron_log_lines():
    log = (" validation loss at iteration 0 | lm loss value: 1.104058E+01 | lm loss PPL: 6.2E+04 |\n"
           " [2026-12-06 23:50:01] iteration       10/     120 | consumed samples:          160 |"
           " learning rate: 1.979663E-03 | lm loss: 9.891735E+00 | loss scale: 1.0 |\n")
    assert logged_losses(log) == {("validation", 0): "1.104058E+01",
                                  ("training", 10): "9.891735E+00"}


# ---- slow: the front page on a fresh copy ------------------------------------------------------

def copy_checkout(destination, venv):
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO_ROOT,
        capture_output=True, check=True).stdout.decode().split("\0")
    for relative in filter(None, listed):
        if relative == venv:  # a link to the environment shows up as an untracked file
            continue
        source = os.path.join(REPO_ROOT, relative)
        if not os.path.lexists(source):  # deleted in the working tree, not yet committed
            continue
        target = os.path.join(destination, relative)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)
    # A repository, as a clone is (tools may ask git which commit they run).
    subprocess.run(["git", "init", "-q"], cwd=destination, check=True)
    subprocess.run(["git", "add", "-A"], cwd=destination, check=True)
    subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@localhost", "commit",
                    "-q", "-m", "the checkout under test"], cwd=destination, check=True)
    # The corpus's downloaded packages are a cache of pinned archives (safe to delete, the
    # builder says): reuse this checkout's to spare the network; everything is rebuilt from them.
    downloads = os.path.join("data", "default", "downloads")
    if os.path.isdir(os.path.join(REPO_ROOT, downloads)):
        shutil.copytree(os.path.join(REPO_ROOT, downloads), os.path.join(destination, downloads))


def fresh_shell_environment():
    return {name: value for name, value in os.environ.items() if name not in LAUNCHER_VARIABLES}


@pytest.fixture(scope="module")
def front_page_clone(tmp_path_factory):
    assert sys.prefix != sys.base_prefix, \
        "run the tests from the virtual environment `make` creates (.venv/bin/python -m pytest)"
    clone = str(tmp_path_factory.mktemp("readme") / "megatron_ponder")
    venv, stamp = makefile_install_stamp()
    copy_checkout(clone, venv)
    os.symlink(sys.prefix, os.path.join(clone, venv))
    setup = subprocess.run(["make", "-o", stamp, "pretrain"], cwd=clone,
                           env=fresh_shell_environment(), capture_output=True, text=True,
                           timeout=SESSION_TIMEOUT_S)
    assert setup.returncode == 0, setup.stdout[-4000:] + setup.stderr[-4000:]
    return clone


@pytest.mark.slow  # the default run: minutes on 2 CPU cores
def test_make_pretrain_prints_the_readme_losses(front_page_clone):
    with open(os.path.join(front_page_clone, DEFAULT_RUN_LOG)) as handle:
        logged = logged_losses(handle.read())
    expected = readme_excerpt_losses(readme_blocks())
    assert {key: logged.get(key) for key in expected} == expected


@pytest.mark.slow  # the default run, then every later command of the front page
def test_front_page_commands_work_in_order(front_page_clone):
    script = "set -e -o pipefail\n" + "\n".join(later_commands(readme_blocks()))
    session = subprocess.run(["bash", "-c", script], cwd=front_page_clone,
                             env=fresh_shell_environment(), capture_output=True, text=True,
                             timeout=SESSION_TIMEOUT_S)
    assert session.returncode == 0, session.stdout[-6000:] + session.stderr[-6000:]
