"""Registry references as inputs: resolved to the exact version, pulled, hashed for lineage."""

from __future__ import annotations

import pytest

from lorahive.cli.sources import looks_like_ref, resolve_sources, select_refs
from lorahive.hub.errors import InvalidRequestError, NotFoundError
from lorahive.hub.lineage import Parent, parents
from tests.models import make_peft_adapter


@pytest.fixture()
def registry_with_two(home, tiny_llama_dir, tmp_path):
    from lorahive.registry.local import LocalRegistry

    reg = LocalRegistry()
    reg.create_namespace("acme")
    a = make_peft_adapter(tiny_llama_dir, tmp_path / "a", seed=11)
    b = make_peft_adapter(tiny_llama_dir, tmp_path / "b", seed=12)
    reg.publish(a, "acme/sentiment", task="text-classification", tags=["en"])
    reg.publish(b, "acme/topics", task="text-classification", tags=["en", "news"])
    reg.publish(a, "acme/topics", version="2")
    return reg, a, b


def test_refs_resolve_to_exact_versions(registry_with_two):
    _reg, a, _ = registry_with_two
    sources = resolve_sources(["acme/topics:latest", "acme/topics@1", str(a)])
    assert [s.ref for s in sources] == ["acme/topics@2", "acme/topics@1", str(a)]
    assert sources[0].version == "2" and sources[2].version is None
    # topics@2 is the same bytes as a: same sha256 whether pulled or local
    assert sources[0].sha256 == sources[2].sha256
    assert (sources[1].path / "adapter_config.json").is_file()
    made = parents(sources, [0.5, 0.25, 0.25])
    assert made[1] == Parent("acme/topics@1", "1", sources[1].sha256, 0.25)


def test_bad_inputs(registry_with_two, tmp_path):
    with pytest.raises(NotFoundError):
        resolve_sources(["acme/missing"])
    with pytest.raises(InvalidRequestError, match="neither an adapter directory"):
        resolve_sources(["not a ref!"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidRequestError, match=r"without adapter_config\.json"):
        resolve_sources([str(tmp_path / "empty")])
    assert not looks_like_ref(str(tmp_path))


def test_select_by_filter(registry_with_two):
    assert sorted(select_refs("task=text-classification")) == ["acme/sentiment@1", "acme/topics@2"]
    assert select_refs("tag=news") == ["acme/topics@2"]
    assert select_refs("base_model=lorahive-tests/tiny-llama,tag=en", limit=1)[0].startswith("acme/")
    with pytest.raises(InvalidRequestError, match="no adapter"):
        select_refs("task=translation")
    with pytest.raises(InvalidRequestError, match="key=value"):
        select_refs("colour=blue")
