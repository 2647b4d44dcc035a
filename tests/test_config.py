from __future__ import annotations

from pathlib import Path

import pytest

from proxy.config import ConfigError, Mode, load_settings, resolve_path
from tests.helpers import ROOT


def test_example_configs_load() -> None:
    for path in (ROOT / "config").glob("*.yaml"):
        s = load_settings(path)
        assert s.models.old.path and s.models.new.path


def test_packaged_model_paths_resolve() -> None:
    s = load_settings(ROOT / "config" / "demo.yaml")
    assert Path(resolve_path(s.models.old.path)).is_file()
    assert Path(resolve_path(s.models.new.path)).is_dir()


def test_env_overrides_file(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CROSSFADE_MODE", "new")
    monkeypatch.setenv("CROSSFADE_FUSION__K", "30")
    s = load_settings(ROOT / "config" / "demo.yaml")
    assert s.mode is Mode.NEW and s.fusion.k == 30


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"mode": "sideways"}, "mode"),
        ({"fusion": {"k": 0}}, "fusion.k"),
        ({"fusion": {"surprise": 1}}, "fusion.surprise"),
        (
            {"indexes": {"old": {"backend": "edge"}, "new": {"backend": "edge", "path": "n"}}},
            "indexes.old",
        ),
        (
            {
                "models": {
                    "old": {"kind": "onnx", "path": "x.onnx"},
                    "new": {"kind": "sentence-transformers", "path": "y"},
                }
            },
            "models.old",
        ),
    ],
)
def test_wrong_config_names_the_field(tmp_path: Path, patch: dict, field: str) -> None:
    import yaml

    data = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    data.update(patch)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as e:
        load_settings(path)
    assert field in str(e.value)


CHROMA = {"backend": "chroma", "url": "http://127.0.0.1:8000"}


@pytest.mark.parametrize(
    ("index", "says"),
    [
        ({"backend": "chroma"}, "needs 'url'"),
        ({**CHROMA, "url": ":memory:"}, "local:PATH"),
        ({**CHROMA, "url": "http://127.0.0.1:8000/api/v2"}, "HOST:PORT"),
        ({**CHROMA, "collection": "ab"}, "3-512 characters"),
        ({**CHROMA, "collection": "-docs"}, "starting and ending"),
        ({**CHROMA, "api_key": "k"}, "no key of its own"),
        ({**CHROMA, "database": " "}, "'database' is empty"),
        ({**CHROMA, "adopt": {"text_field": "text"}}, "adopt.text_field: Qdrant's payload"),
        ({"backend": "edge", "path": "o", "adopt": {}}, "Qdrant or Chroma collection"),
        ({"backend": "edge", "path": "o", "tenant": "t"}, "are Chroma's"),
        ({"backend": "qdrant", "url": ":memory:", "database": "d"}, "are Chroma's"),
    ],
)
def test_chroma_index_settings_are_checked(index: dict, says: str) -> None:
    with pytest.raises(ConfigError, match="indexes.old") as e:
        load_settings(ROOT / "config" / "demo.yaml", indexes={"old": index, "new": CHROMA})
    assert says in str(e.value)


def test_chroma_index_settings() -> None:
    local = {"backend": "chroma", "url": "local:chroma", "tenant": "t1", "database": "db"}
    s = load_settings(ROOT / "config" / "demo.yaml", indexes={"old": local, "new": CHROMA})
    assert (s.indexes.old.tenant, s.indexes.old.database) == ("t1", "db")
    assert s.indexes.new.tenant is None and s.indexes.new.collection == "crossfade"


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(bad)


def test_the_config_reference_page_is_generated_not_copied() -> None:
    """docs/reference/config.md holds a marker, no table; the docs build (docs/hooks.py) puts
    reference_markdown() there, so every field of the models is on the page it builds."""
    from proxy.config import Settings, reference_markdown
    from tests.docblocks import hooks

    CONFIG_REFERENCE, render = hooks().CONFIG_REFERENCE, hooks().render

    page = (ROOT / "docs" / "reference" / "config.md").read_text()
    assert page.count(CONFIG_REFERENCE) == 1
    assert "| field |" not in page and "`models.old.kind`" not in page, "a copy is committed"
    built = render(page)
    assert reference_markdown() in built and CONFIG_REFERENCE not in built
    for name in Settings.model_fields:
        assert f"| `{name}" in built, name
    for p in [ROOT / "README.md", *(ROOT / "docs").rglob("*.md")]:
        if p.name != "config.md":
            assert "`models.old.kind` |" not in p.read_text(), f"a copy of the reference in {p}"
