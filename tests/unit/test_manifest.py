"""opd.manifest: the shipped manifest matches the registries, config checks import no torch,
and names the manifest lacks fall back to the registries."""

from __future__ import annotations

import subprocess
import sys

import pytest

from opd import manifest
from opd.config import ConfigError, load_config


def test_shipped_manifest_matches_the_registries():
    """Regenerate with ``python -m opd.manifest`` when this fails. In a fresh process: other
    tests register methods and scorers of their own in this one's registries."""
    proc = subprocess.run(
        [sys.executable, "-m", "opd.manifest", "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_paper_scorers_are_table_1s():
    """The manifest marks a scorer as the paper's by the package that defines it."""
    from opd.rewards.paper import PAPER_SCORERS

    marked = {n for n, entry in manifest.load()["scorers"].items() if entry["paper"]}
    assert marked == set(PAPER_SCORERS)


def test_every_method_config_is_the_registered_one():
    from opd.registry import METHODS

    for name, cls in METHODS.items():
        assert manifest.method_config(name) is cls.Config


def test_loading_every_profile_imports_no_torch():
    code = (
        "import sys\n"
        "from opd.config import load_config\n"
        "for p in ('smoke', 'mini', 'paper'):\n"
        "    load_config(p)\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'diffusers') if m in sys.modules)\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_names_missing_from_the_manifest_fall_back_to_the_registries(monkeypatch):
    from opd.registry import METHODS

    monkeypatch.setattr(manifest, "load", lambda: {"methods": {}, "scorers": {}})
    assert manifest.method_config("cascade_nft") is METHODS.get("cascade_nft").Config
    assert manifest.method("opd")["needs_teachers"] is True
    assert manifest.scorer("compose") == {"backend": "local", "paper": False}
    with pytest.raises(KeyError, match=r"known: .*opd"):
        manifest.method("nosuch")
    # the config check takes the same path: a bad value still names its key
    with pytest.raises(ConfigError, match=r"methods\.opd\.steps"):
        load_config("smoke", overrides={"methods": {"opd": {"steps": -1}}})


def test_check_flags_a_stale_manifest(tmp_path, monkeypatch, capsys):
    stale = tmp_path / "manifest.json"
    stale.write_text('{"methods": {}, "scorers": {}}\n')
    monkeypatch.setattr(manifest, "MANIFEST_PATH", stale)
    assert manifest.main(["--check"]) == 1
    assert "out of date" in capsys.readouterr().out
    assert manifest.main([]) == 0 and manifest.main(["--check"]) == 0
