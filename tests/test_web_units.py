"""The web pages' parts without a server: card sanitising and its cost bounds, bounded rendering
of YAML values, escaped SVG, the subspace similarity against its dense definition, and the
service reads the pages use (lineage children, facets) with their visibility rules."""

from __future__ import annotations

import re
import shutil

import pytest
import torch
import yaml

from lorahive.hub.lineage import Lineage, Parent, write_sidecar
from lorahive.hub.lowrank import singular_subspaces, subspace_similarity
from lorahive.hub.modelcard import split_card
from lorahive.registry.local import LocalRegistry
from lorahive.registry.service import LineageEdge, RegistryService
from lorahive.registry.settings import Settings
from lorahive.registry.web import cards, plots
from lorahive.registry.web.graph import lineage_svg
from tests.registry_helpers import pg  # noqa: F401
from tests.web_helpers import HOSTILE_CARD

DANGEROUS_TAGS = ("<script", "<iframe", "<object", "<form", "<style", "<meta", "<svg", "<input")
DANGEROUS_ATTR = re.compile(r"<[^>]*(\son[a-z]+=|style=|javascript:|data:text)", re.I)


def test_hostile_card_is_inert_html(monkeypatch):
    monkeypatch.setattr(cards, "RENDER_SECONDS", 60.0)  # rendered, however loaded the machine
    card = cards.render_card(HOSTILE_CARD + "\n")  # not a cached rendering
    html = str(card.html).lower()
    assert not card.plain and "<h1>hostile card</h1>" in html and "<table>" in html
    for bad in DANGEROUS_TAGS:
        assert bad not in html, bad
    assert not DANGEROUS_ATTR.search(html)
    assert "__pwned = 1" not in html and "__pwned = 8" not in html  # script bodies dropped
    assert "lol" not in str(card.front.get("tags"))


def test_markdown_links_keep_safe_schemes_only():
    html, ok = cards.markdown_html(
        "[a](https://x.example/p) [b](mailto:x@y.z) [c](javascript:alert(1)) "
        "[d](vbscript:x) [e](/relative) <a href='JAVASCRIPT:alert(1)'>f</a> <!-- hidden -->")
    assert ok
    assert 'href="https://x.example/p"' in html and 'href="mailto:x@y.z"' in html
    assert 'href="/relative"' in html and "hidden" not in html
    assert "javascript" not in html.lower().replace("[c](javascript:alert(1))", "")
    assert html.count("<a ") == 4 and 'rel="noopener noreferrer nofollow"' in html


def test_costly_cards_fall_back_to_plain_text():
    wide = "|" + "a|" * 500 + "\n|" + "-|" * 500 + "\n" + "|x|\n" * 100
    assert cards.table_cells(wide) > cards.MAX_TABLE_CELLS
    html, ok = cards.markdown_html(wide)
    assert not ok and html.startswith('<pre class="card-plain">')
    html, ok = cards.markdown_html("[" * 5000 + "x" + "]" * 5000, budget=0.0)
    assert not ok and "<a" not in html
    html, ok = cards.markdown_html("<script>alert(1)</script>", budget=0.0)
    assert not ok and "<script" not in html  # the plain fallback is escaped too
    long = cards.render_card("# t\n\n" + "word " * 30_000)
    assert long.truncated and not long.plain


def test_deep_nesting_is_bounded():
    html, ok = cards.markdown_html(">" * 5000 + " x\n\n" + "- " * 5000 + "y")
    assert ok and html.count("<blockquote>") <= 25 and html.count("<ul>") <= 25


def test_brief_never_expands_aliases():
    front, body = split_card(HOSTILE_CARD)
    assert body.lstrip().startswith("# Hostile card")
    out = cards.brief(front["e"], limit=300)
    assert len(out) <= 301 and out.endswith("…")
    assert cards.brief({"a": [1, 2.5, {"b": None}]}) == "{a: [1, 2.5, {b: None}]}"
    nested = yaml.safe_load("x: " + "[" * 50 + "]" * 50)
    assert "…" in cards.brief(nested)


def test_split_card_without_front_matter():
    assert split_card("# hi") == ({}, "# hi")
    assert split_card("---\n: [\n---\nbody") == ({}, "body")


def test_svg_labels_are_escaped():
    chart = str(plots.line_chart([plots.Series("<script>x</script>", [(0, 1.0), (1, 2.0)])],
                                 "layer <b>", "norm"))
    assert "<script>" not in chart and "&lt;script&gt;" in chart and "&lt;b&gt;" in chart
    bars = str(plots.bar_chart([3.0, 2.0, 1e-3], "i", "σ"))
    assert bars.count('class="bar"') == 3
    edge = LineageEdge("ns", "n<i>", "1", 0.5)
    svg = str(lineage_svg(("a<b>", "m"), [edge, LineageEdge(None, None, None, None, hidden=True)],
                          [], lambda e: "/x?a=1&b=2"))
    assert "<b>" not in svg and "n&lt;i&gt;" in svg and "&amp;b=2" in svg
    assert "private adapter" in svg


def test_nice_ticks_cover_the_range():
    for lo, hi in ((0, 1), (0, 7.3), (0.001, 0.0042), (-3, 12), (5, 5)):
        t = plots.nice_ticks(lo, hi)
        assert t[0] <= lo and t[-1] >= hi and len(t) < 20


def _dense_phi(Ba, Aa, Bb, Ab, right: bool) -> float:
    """The LoRA paper's normalised subspace similarity from dense SVDs of the two deltas."""
    def basis(B, A):
        U, S, Vh = torch.linalg.svd((B @ A).double(), full_matrices=False)
        k = int((1e-6 * S[0] < S).sum())
        return Vh[:k].T if right else U[:, :k]
    Ua, Ub = basis(Ba, Aa), basis(Bb, Ab)
    k = min(Ua.shape[1], Ub.shape[1])
    return float((Ua.T @ Ub).norm() ** 2 / k)


def test_subspace_similarity_matches_the_dense_definition():
    g = torch.Generator().manual_seed(0)
    Ba, Aa = torch.randn(48, 4, generator=g), torch.randn(4, 40, generator=g)
    Bb, Ab = torch.randn(48, 8, generator=g), torch.randn(8, 40, generator=g)
    ua, va = singular_subspaces(Ba, Aa)
    ub, vb = singular_subspaces(Bb, Ab)
    assert subspace_similarity(ua, ub) == pytest.approx(_dense_phi(Ba, Aa, Bb, Ab, False), abs=1e-5)
    assert subspace_similarity(va, vb) == pytest.approx(_dense_phi(Ba, Aa, Bb, Ab, True), abs=1e-5)
    u2, _ = singular_subspaces(Ba * 3, Aa / 7)  # same delta directions, another scale
    assert subspace_similarity(ua, u2) == pytest.approx(1.0, abs=1e-6)
    e = torch.eye(48, dtype=torch.float64)
    assert subspace_similarity(e[:, :4], e[:, 4:8]) == 0.0
    assert subspace_similarity(e[:, :0], e[:, :4]) == 0.0


@pytest.fixture()
def reg(tmp_path) -> LocalRegistry:
    r = LocalRegistry(service=RegistryService(Settings(home=tmp_path / "home")))
    yield r
    r.service.close()


def _child(lora_dir, tmp_path, name: str, parents: list[str]) -> object:
    d = tmp_path / name
    shutil.copytree(lora_dir, d)
    write_sidecar(d, Lineage("fuse:ties", [Parent(p, p.split("@")[1], None, 0.5)
                                           for p in parents], {"density": 0.5}))
    return d


def test_lineage_children_match_names_exactly_and_hide_private(reg, lora_dir, tmp_path):
    svc, admin = reg.service, reg.service.authenticate(reg.token)
    reg.publish(lora_dir, "admin/x_y")
    reg.publish(lora_dir, "admin/xzy")
    reg.publish(_child(lora_dir, tmp_path, "c1", ["admin/x_y@1"]), "admin/from-x_y")
    reg.publish(_child(lora_dir, tmp_path, "c2", ["admin/xzy@1"]), "admin/from-xzy")
    reg.publish(_child(lora_dir, tmp_path, "c3", ["admin/x_y@1", "admin/xzy@1"]),
                "admin/hidden-child", private=True)
    anon = svc.authenticate(None)
    kids = svc.lineage_children(anon, "admin/x_y")
    assert [(k.repo, k.version, k.method, k.weight) for k in kids] == [
        ("admin/from-x_y", "1", "fuse:ties", 0.5)]
    assert {k.repo for k in svc.lineage_children(admin, "admin/x_y")} == {
        "admin/from-x_y", "admin/hidden-child"}
    info = svc.resolve(anon, "admin/from-xzy")
    assert [e.repo for e in svc.lineage_parents(info)] == ["admin/xzy"]


def test_facets_count_only_what_the_caller_sees(reg, lora_dir):
    svc = reg.service
    reg.publish(lora_dir, "admin/pub", task="qa", tags=["open"])
    reg.publish(lora_dir, "admin/priv", task="secret-task", tags=["hidden"], private=True)
    anon = svc.facets(svc.authenticate(None))
    assert anon["task"] == [("qa", 1)] and anon["tag"] == [("open", 1)]
    full = svc.facets(svc.authenticate(reg.token))
    assert ("secret-task", 1) in full["task"] and ("hidden", 1) in full["tag"]
    assert [v.version for v in svc.version_list(svc.authenticate(None), "admin/pub")] == ["1"]


@pytest.mark.postgres
def test_web_reads_and_sessions_on_postgres(pg, lora_dir, tmp_path):  # noqa: F811
    """The same reads on PostgreSQL (JSON cast to text for lineage, grouped facets) and a
    session that ends when its token is revoked."""
    svc = RegistryService(Settings(home=tmp_path / "home", database_url=pg.url(pg.create_db())))
    reg = LocalRegistry(service=svc)
    try:
        reg.publish(lora_dir, "admin/x_y", task="qa", tags=["t"])
        reg.publish(_child(lora_dir, tmp_path, "c1", ["admin/x_y@1"]), "admin/kid")
        anon = svc.authenticate(None)
        assert [k.repo for k in svc.lineage_children(anon, "admin/x_y")] == ["admin/kid"]
        assert svc.facets(anon)["task"] == [("qa", 1)] and svc.facets(anon)["tag"] == [("t", 1)]
        tok = reg.create_token("web", scope="read")
        sid, csrf, p = svc.start_web_session(tok.token)
        assert svc.web_session(sid) == (p, csrf)
        svc.revoke_token(svc.authenticate(reg.token), tok.info.id)
        assert svc.web_session(sid) is None
        view = svc.adapter_view(anon, "admin/kid", "README.md", 1000)
        assert view.file is not None and view.file.startswith(b"---")
    finally:
        svc.close()
