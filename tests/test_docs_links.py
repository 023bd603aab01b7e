"""Every relative link of README.md and docs/*.md reaches a file, and its #anchor a heading there
(GitHub's anchors: the heading in lower case, punctuation dropped, spaces as hyphens)."""

import glob
import os
import re

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = [os.path.join(REPO_ROOT, "README.md"),
         *sorted(glob.glob(os.path.join(REPO_ROOT, "docs", "*.md")))]
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCED = re.compile(r"^```.*?^```", re.S | re.M)


def anchor(heading):
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def prose(path):
    with open(path) as handle:
        return FENCED.sub("", handle.read())


def anchors(path):
    return {anchor(line.lstrip("#")) for line in prose(path).splitlines() if line.startswith("#")}


def broken_links(path):
    broken = []
    for target in LINK.findall(prose(path)):
        if re.match(r"[a-z]+:", target):
            continue
        file_part, _, fragment = target.partition("#")
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part)) \
            if file_part else path
        if not os.path.exists(resolved):
            broken.append(f"{target}: no file {os.path.relpath(resolved, REPO_ROOT)}")
        elif fragment and fragment not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    return broken


def test_anchor_follows_github():
    assert anchor("lm-eval's hf backend") == "lm-evals-hf-backend"
    assert anchor("Parallel training (tensor, sequence, pipeline, data)") == \
        "parallel-training-tensor-sequence-pipeline-data"


def test_links_of_readme_and_docs_resolve():
    broken = {os.path.relpath(page, REPO_ROOT): broken_links(page) for page in PAGES}
    assert not {page: links for page, links in broken.items() if links}
