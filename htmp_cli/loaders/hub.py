"""Hugging Face Hub model ids (`org/name`, `org/name@revision`) where a path is taken.

A path that exists always wins. Otherwise the id is looked up in the `huggingface_hub` library's
cache (the files a user already downloaded, through any library); failing that, and unless the
library is offline (HF_HUB_OFFLINE=1), just the files the loader needs are downloaded into that
cache: the shard index and its shards, or the one weights file, or an adapter's config and
weights, chosen in the order a folder is read (htmp_cli.loaders.FOLDER_FILES). Never the whole repo.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from htmp_cli.errors import CheckpointError
from htmp_cli.loaders import FOLDER_FILES
from htmp_cli.loaders.adapters import WEIGHT_NAMES

_HUB_ID = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*)(?:@(?P<revision>[\w./-]+))?$")
# What a model repo's folder is read for, in the order the folder reader prefers; the adapter's
# weights come with its config.
WEIGHT_FILES = FOLDER_FILES + WEIGHT_NAMES


def hub_id(text: str) -> tuple[str, str | None] | None:
    """(repo id, revision) if `text` reads as a Hub model id, else None."""
    match = _HUB_ID.match(text)
    if match is None or text.startswith((".", "/")) or "//" in text:
        return None
    return match["repo"], match["revision"]


def resolve(text: str) -> tuple[Path, str]:
    """The local path of a Hub id's weights, and a note saying where they came from."""
    parsed = hub_id(text)
    if parsed is None:
        raise CheckpointError(f"{text}: no such file or directory")
    repo, revision = parsed
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        raise CheckpointError(f"{text}: no such file or directory (as a Hugging Face model id it needs the "
                              "huggingface_hub package: pip install 'htmp-cli[hub]')") from None
    cached = _from_cache(repo, revision)
    if cached is not None:
        return cached, f"Hugging Face Hub {text}: from the local cache, {cached.parent}"
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        raise CheckpointError(f"{text}: no such file or directory, and not in the Hugging Face cache "
                              f"({constants.HF_HUB_CACHE}); HF_HUB_OFFLINE is set, so nothing is downloaded")
    path, names = _download(text, repo, revision)
    return path, f"Hugging Face Hub {text}: downloaded {', '.join(names)} into the cache"


def _from_cache(repo: str, revision: str | None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    for name in WEIGHT_FILES:
        found = try_to_load_from_cache(repo, name, revision=revision)
        if not isinstance(found, str):
            continue
        path = Path(found)
        if name.endswith(".index.json"):
            shards = _shards(path)
            if not all(isinstance(try_to_load_from_cache(repo, shard, revision=revision), str) for shard in shards):
                continue
        if name.startswith("adapter_model"):
            config = try_to_load_from_cache(repo, "adapter_config.json", revision=revision)
            return path.parent if isinstance(config, str) else path
        return path
    return None


def _shards(index: Path) -> list[str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        return sorted(set(weight_map.values()))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return []  # the index reader names what is wrong with it


def _download(text: str, repo: str, revision: str | None) -> tuple[Path, list[str]]:
    """The first of WEIGHT_FILES the repo has (asked file by file: a metadata request each, which
    the library does not retry, so an unreachable Hub fails at once), and what it needs beside it."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    try:
        for chosen in WEIGHT_FILES:
            try:
                path = Path(hf_hub_download(repo, chosen, revision=revision))
            except LocalEntryNotFoundError:
                raise
            except EntryNotFoundError:
                continue
            names = [chosen]
            if chosen.endswith(".index.json"):
                names += _shards(path)
            elif chosen.startswith("adapter_model"):
                names.append("adapter_config.json")
            for name in names[1:]:
                hf_hub_download(repo, name, revision=revision)
            return (path.parent if chosen.startswith("adapter_model") else path), names
    except (RepositoryNotFoundError, RevisionNotFoundError) as err:
        raise CheckpointError(f"{text}: no such file or directory, and not a model on the Hub "
                              f"({type(err).__name__})") from None
    except LocalEntryNotFoundError:
        raise CheckpointError(f"{text}: no such file or directory, not in the Hugging Face cache, and the Hub "
                              "could not be reached") from None
    except HfHubHTTPError as err:
        raise CheckpointError(f"{text}: not in the Hugging Face cache, and the Hub answered "
                              f"{str(err).splitlines()[0][:160]}") from None
    except Exception as err:  # the HTTP client's connection errors, whatever their class
        raise CheckpointError(f"{text}: not in the Hugging Face cache, and the Hub could not be reached "
                              f"({type(err).__name__}: {str(err)[:160]})") from None
    raise CheckpointError(f"{text}: the Hub repo has none of {', '.join(WEIGHT_FILES)} (a GGUF repo: download "
                          "the one file to analyse and pass its path)")
