"""Published adapters in the config (``released``): an entry is checked before anything runs
(a missing key or a benchmark the profile lacks is named), names are unique, and a teacher may
name an entry, which it is queried at the CFG of."""

from __future__ import annotations

import copy

import pytest

from opd.config import ConfigError, load_config
from opd.released import adapters, downloaded_teacher_hours

ENTRY = {
    "name": "student",
    "hub": "owner/repo",
    "subfolder": "Student/lora",
    "revision": "main",
    "guidance": 4.5,
    "reported": {"source": "a paper, Table 1", "protocol": {}, "values": {"pick": 0.5}},
}
BASE = {"hub": "owner/base", "revision": "main"}


def smoke_with(*entries: dict, **teacher: dict) -> dict:
    """The smoke profile with a released section (and teachers naming entries)."""
    over: dict = {"released": {"base": BASE, "adapters": [copy.deepcopy(e) for e in entries]}}
    if teacher:
        over["tasks"] = {t: {"teacher": spec} for t, spec in teacher.items()}
    return load_config("smoke", overrides=over)


@pytest.mark.parametrize("key", ["hub", "subfolder", "revision", "guidance", "reported"])
def test_an_entry_without_a_required_key_is_refused_naming_it(key: str) -> None:
    entry = {k: v for k, v in ENTRY.items() if k != key}
    with pytest.raises(ConfigError, match=rf"released\.adapters\.0: '{key}' is a required"):
        smoke_with(entry)


def test_a_reported_value_of_an_unknown_benchmark_is_refused_naming_it() -> None:
    entry = copy.deepcopy(ENTRY)
    entry["reported"]["values"]["geneva"] = 0.9
    with pytest.raises(ConfigError, match=r"released\.adapters\[0\]\.reported\.values\.geneva"):
        smoke_with(entry)
    entry = copy.deepcopy(ENTRY)
    entry["reported"]["protocol"] = {"prompts": {"texts": {"set": "x", "count": 4}}}
    with pytest.raises(ConfigError, match=r"reported\.protocol\.prompts\.texts: not a task"):
        smoke_with(entry)
    entry = copy.deepcopy(ENTRY)
    del entry["reported"]["source"]  # every reported number carries its source
    with pytest.raises(ConfigError, match=r"'source' is a required property"):
        smoke_with(entry)


def test_names_are_unique_and_teachers_find_their_entry_at_its_cfg() -> None:
    with pytest.raises(ConfigError, match=r"adapters\[1\]\.name: 'student' is also"):
        smoke_with(ENTRY, ENTRY)
    with pytest.raises(ConfigError, match=r"tasks\.text\.teacher\.pretrained\.released: 'x'"):
        smoke_with(ENTRY, text={"pretrained": {"released": "x"}})
    with pytest.raises(ConfigError, match=r"tasks\.text\.teacher\.guidance: 1\.0.*CFG 4\.5"):
        smoke_with(ENTRY, text={"pretrained": {"released": "student"}, "guidance": 1.0})
    cfg = smoke_with(ENTRY, text={"pretrained": {"released": "student"}})
    assert list(adapters(cfg)) == ["student"]
    assert downloaded_teacher_hours(cfg) == {"text": None}
