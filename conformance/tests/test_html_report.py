"""The HTML reports (`run --html`, `interop --html`), `list --json`, and where artefacts go.

The pages are parsed with html.parser into a small tree: the tests read the matrix, the
filters, the detail of a non-conforming cell, its ladder and pcap link, the diff tables
and the environment as a reader's browser would get them, and check that hostile text
from a run stays text and that nothing points off the page's machine.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import pytest

import conformance
from conformance import baseline, html_report, runner
from conformance.__main__ import _parser, main
from conformance.cases import catalogue
from conformance.interop import matrix
from conformance.interop.cell import CellResult
from conformance.model import Case, Level, Result, Role, Verdict

HOSTILE = '</td></tr><script>alert("x")</script><img src="https://evil.example/x" onerror=1>&amp;'
VOID = {"meta", "input", "br", "img", "link", "hr", "col", "source", "wbr"}


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    content: list[Node | str] = field(default_factory=list)  # children and text, in order

    @property
    def children(self) -> list[Node]:
        return [c for c in self.content if isinstance(c, Node)]

    @property
    def classes(self) -> list[str]:
        return self.attrs.get("class", "").split()

    def text(self) -> str:
        return "".join(c if isinstance(c, str) else c.text() for c in self.content)

    def walk(self) -> list[Node]:
        nodes = [self]
        for child in self.children:
            nodes.extend(child.walk())
        return nodes

    def find(self, tag: str = "", cls: str = "", **attrs: str) -> list[Node]:
        """Descendants by tag, class and attribute values (`id_="x"` for id)."""
        return [
            n
            for n in self.walk()[1:]
            if (not tag or n.tag == tag)
            and (not cls or cls in n.classes)
            and all(n.attrs.get(k.rstrip("_").replace("_", "-")) == v for k, v in attrs.items())
        ]

    def child(self, tag: str) -> Node:
        """The one direct child with this tag."""
        found = [c for c in self.children if c.tag == tag]
        assert len(found) == 1, (tag, len(found))
        return found[0]

    def one(self, tag: str = "", cls: str = "", **attrs: str) -> Node:
        found = self.find(tag, cls, **attrs)
        assert len(found) == 1, (tag, cls, attrs, len(found))
        return found[0]


class _Tree(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].content.append(node)
        if tag not in VOID:
            self.stack.append(node)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.stack[-1].content.append(Node(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag: str) -> None:
        for depth in range(len(self.stack) - 1, 0, -1):
            if self.stack[depth].tag == tag:
                del self.stack[depth:]
                return
        raise AssertionError(f"</{tag}> closes nothing open")

    def handle_data(self, data: str) -> None:
        self.stack[-1].content.append(data)


def parse(page: str) -> Node:
    tree = _Tree()
    tree.feed(page)
    tree.close()
    assert [n.tag for n in tree.stack] == ["#document"], "elements left open"
    return tree.root


def _case(case_id: str, expected: str = "the IUT answers with RST") -> Case:
    return Case(
        id=case_id, area=case_id.split(".")[0], title=case_id, rfc="RFC 8684", section="3.2",
        level=Level.MUST, versions=frozenset({1}), role=Role.LISTENER, expected=expected,
        run=lambda *_: None,
    )  # fmt: skip


LADDER = (
    "+0.000120  tester → IUT  eth0  192.0.2.1:40000 > 192.0.2.2:5001  S   seq 1 ack 0 len 0"
    "  mp_capable v1 syn flags [h]\n"
    "+0.000310  tester ← IUT  eth0  192.0.2.2:5001 > 192.0.2.1:40000  S.  seq 9 ack 2 len 0"
    "  no mptcp options\n"
    "+0.000400  tester ← IUT  eth1  (not TCP)\n"
    "a line of another <b>format</b>\n"
)
CASES = [_case("mp_join.a"), _case("mp_join.b", expected=HOSTILE), _case("token.c")]
IUTS = ["kernel", "stack-v1", "stack-v0"]


def _results(artifacts: Path) -> list[Result]:
    artifacts.mkdir(parents=True, exist_ok=True)
    pcap, ladder = (
        artifacts / "stack-v1.mp_join.b.pcap",
        artifacts / "stack-v1.mp_join.b.ladder.txt",
    )
    pcap.write_bytes(bytes.fromhex("d4c3b2a1"))
    ladder.write_text(LADDER)
    return [
        Result("mp_join.a", "kernel", Verdict.CONFORMS),
        Result("mp_join.a", "stack-v1", Verdict.CONFORMS),
        Result("mp_join.a", "stack-v0", Verdict.CONFORMS),
        Result("mp_join.b", "kernel", Verdict.CONFORMS),
        Result(
            "mp_join.b",
            "stack-v1",
            Verdict.DEVIATES,
            HOSTILE,
            0.25,
            {"MPJoinAckHMacFailure": 1},
            [str(pcap), str(ladder)],
        ),
        Result("mp_join.b", "stack-v0", Verdict.NOT_APPLICABLE, f"v1 only {HOSTILE}"),
        Result("token.c", "kernel", Verdict.NOT_APPLICABLE, "v0 only"),
        Result("token.c", "stack-v1", Verdict.ERROR, "tester crashed"),
        # stack-v0 has no result for token.c: its cell says so
    ]


def _page(summary: str = "8 results") -> html_report.Page:
    return html_report.Page(
        title="MPTCP conformance", summary=summary, generated="2026-12-04 12:00:00",
        command="python -m conformance run", skipped={"other": f"not here {HOSTILE}"},
        environments={"kernel": {"version": "6.18.0", "mptcp": "v1 (RFC 8684)"},
                      "stack-v1": {"version": "0.1.0 (git abc)", "python": "3.11.7"}},
        harness={"kernel": "6.18.0", "python": "3.11.7"},
    )  # fmt: skip


@pytest.fixture
def run_page(tmp_path: Path) -> tuple[Node, str, Path]:
    output = tmp_path / "reports" / "run.html"
    results = _results(tmp_path / "conformance-artifacts")
    text = html_report.run_page(CASES, IUTS, results, _page(), output)
    html_report.write(output, text)
    return parse(text), text, output


def test_matrix_has_a_row_per_case_and_a_cell_per_iut(run_page: tuple[Node, str, Path]) -> None:
    root, _, _ = run_page
    table = root.one("table", id_="matrix-table")
    heads = [th.text() for th in table.child("thead").find("th")]
    assert heads[:3] == ["case", "area", "requirement"]
    assert heads[3:] == [
        "kernel2 conforms 1 n/a",
        "stack-v11 conforms 1 deviates 1 error",
        "stack-v01 conforms 1 n/a",
    ]
    rows = table.find("tr", cls="item")
    assert [r.attrs["data-key"] for r in rows] == [c.id for c in CASES]
    assert [r.attrs["data-group"] for r in rows] == ["mp_join", "mp_join", "token"]
    cells = {r.attrs["data-key"]: [c for c in r.find("td", cls="cell")] for r in rows}
    assert all(len(c) == len(IUTS) for c in cells.values())
    assert [c.attrs.get("data-verdict") for c in cells["mp_join.b"]] == [
        "conforms", "deviates", "n/a"]  # fmt: skip
    assert [c.attrs.get("data-verdict") for c in cells["token.c"]] == ["n/a", "error", None]
    assert rows[1].attrs["data-verdicts"] == "conforms deviates n/a"


def test_filters_by_area_verdict_and_id_are_there(run_page: tuple[Node, str, Path]) -> None:
    root, _, _ = run_page
    area = root.one("select", id_="group-filter")
    assert [o.attrs["value"] for o in area.find("option")] == ["", "mp_join", "token"]
    boxes = root.find("input", cls="verdict-filter")
    assert [b.attrs["value"] for b in boxes] == ["conforms", "deviates", "n/a", "error"]
    assert all("checked" in b.attrs for b in boxes)
    assert root.one("input", id_="text-filter").attrs["type"] == "search"
    assert root.one("button", id_="expand-all") and root.one("span", id_="shown-count")


def test_a_non_conforming_cell_opens_to_its_detail_ladder_and_pcap(
    run_page: tuple[Node, str, Path],
) -> None:
    root, _, output = run_page
    row = root.one("tr", cls="item", data_key="mp_join.b")
    button = row.one("button", cls="toggle")
    assert button.attrs["aria-expanded"] == "false"
    detail = root.one("tr", id_=button.attrs["aria-controls"])
    assert "hidden" in detail.attrs and detail.attrs["data-parent"] == row.attrs["id"]
    assert detail.one(cls="detail-text").text() == HOSTILE  # the text, exactly
    assert HOSTILE in detail.one("p", cls="expected").text()
    counters = detail.one("table", cls="counters")
    assert [th.text() for th in counters.find("th")] == ["MPJoinAckHMacFailure"]
    ladder = detail.one("table", cls="ladder")
    arrows = ladder.find("tr", cls="arrow")
    assert [a.classes[1] for a in arrows] == ["to-iut", "to-tester", "to-tester"]
    assert [a.one("td", cls="if").text() for a in arrows] == ["eth0", "eth0", "eth1"]
    assert arrows[0].one(cls="opts").text() == "mp_capable v1 syn flags [h]"
    assert arrows[1].one("b").text() == "S." and "seq 9 ack 2 len 0" in arrows[1].text()
    assert arrows[2].one(cls="seg").text() == "(not TCP)"
    assert ladder.one("tr", cls="raw").text() == "a line of another <b>format</b>"
    links = {a.attrs["class"].split()[1]: a.attrs["href"] for a in detail.find("a")}
    assert links["artifact-pcap"] == "../conformance-artifacts/stack-v1.mp_join.b.pcap"
    pcap = output.parent / unquote(links["artifact-pcap"])
    assert pcap.read_bytes() == bytes.fromhex("d4c3b2a1")
    # conforming and n/a cells have no detail to open; the error cell has one
    assert [b.attrs["aria-controls"] for b in root.find("button", cls="toggle")] == [
        "detail-1-1", "detail-2-1"]  # fmt: skip
    error_detail = root.one("tr", id_="detail-2-1")
    assert "no ladder" in error_detail.text() and "no artefacts kept" in error_detail.text()


def test_hostile_text_stays_text(run_page: tuple[Node, str, Path]) -> None:
    root, text, _ = run_page
    elements = root.walk()
    assert len([n for n in elements if n.tag == "script"]) == 1  # the page's own, at the end
    assert not [n for n in elements if n.tag == "img"]
    assert not [(n.tag, k) for n in elements for k in n.attrs if k.startswith("on")]
    na_cell = root.one("tr", cls="item", data_key="mp_join.b").find("td", cls="cell")[2]
    assert na_cell.attrs["title"].startswith(f"v1 only {HOSTILE}")
    assert {n.text() for n in root.find("td", cls="id", title=HOSTILE)} == {"mp_join.b"}
    assert HOSTILE not in text  # only escaped forms of it are in the source


def test_no_external_references(run_page: tuple[Node, str, Path]) -> None:
    root, _, _ = run_page
    for node in root.walk():
        for name in ("src", "href", "action", "srcset", "data"):
            value = node.attrs.get(name, "")
            assert not re.match(r"^\s*(https?:|//|[a-z][a-z0-9+.-]*:)", value, re.I), (node, value)
    assert not root.find("link") and not root.find("iframe")
    styles = " ".join(n.text() for n in root.walk() if n.tag == "style")
    assert "url(" not in styles and "@import" not in styles
    script = root.one("script")
    assert "src" not in script.attrs and "fetch(" not in script.text()
    assert "XMLHttpRequest" not in script.text() and "innerHTML" not in script.text()
    assert "http://" not in script.text() and "https://" not in script.text()


def test_diff_tables_for_every_ordered_pair(run_page: tuple[Node, str, Path]) -> None:
    root, _, _ = run_page
    assert [o.attrs["value"] for o in root.one("select", id_="diff-left").find("option")] == IUTS
    assert "selected" in root.one("select", id_="diff-left").one("option", value="stack-v1").attrs
    assert "selected" in root.one("select", id_="diff-right").one("option", value="kernel").attrs
    tables = root.find("table", cls="diff")
    assert len(tables) == len(IUTS) * (len(IUTS) - 1)
    shown = [t for t in tables if "hidden" not in t.attrs]
    assert [(t.attrs["data-left"], t.attrs["data-right"]) for t in shown] == [
        ("stack-v1", "kernel")
    ]
    rows = shown[0].child("tbody").find("tr")
    assert [r.attrs["data-key"] for r in rows] == ["mp_join.b", "token.c"]
    assert rows[0].find("td")[1].one(cls="detail-text").text() == HOSTILE
    same = root.one("table", cls="diff", data_left="kernel", data_right="stack-v0")
    assert [r.attrs["data-key"] for r in same.child("tbody").find("tr")] == ["mp_join.b"]


def test_environment_of_each_iut(run_page: tuple[Node, str, Path]) -> None:
    root, _, _ = run_page
    table = root.one("table", id_="iut-environment")
    assert [th.text() for th in table.child("thead").find("th")] == ["", *IUTS]
    body = table.child("tbody").find("tr")
    rows = {r.find("th")[0].text(): [td.text() for td in r.find("td")] for r in body}
    assert rows["version"] == ["6.18.0", "0.1.0 (git abc)", ""]
    assert rows["python"] == ["", "3.11.7", ""]
    assert f"not here {HOSTILE}" in root.one("section", id_="environment").text()


def test_ladder_of_more_lines_than_drawn_says_how_many_are_left() -> None:
    line = LADDER.splitlines()[0]
    tree = parse(html_report.ladder_html("\n".join([line] * (html_report.LADDER_LIMIT + 5))))
    assert len(tree.find("tr", cls="arrow")) == html_report.LADDER_LIMIT
    assert "5 more lines" in tree.text()


def _cell(scenario: str, client: str, server: str, verdict: str, **kw: object) -> CellResult:
    return CellResult(scenario, client, server, verdict, **kw)  # type: ignore[arg-type]


def test_interop_page_has_a_grid_per_scenario_and_failed_cells_open(tmp_path: Path) -> None:
    kept = tmp_path / "interop-artifacts" / "transfer.stack-v1.kernel"
    kept.mkdir(parents=True)
    (kept / "client-eth0.pcap").write_bytes(b"")
    (kept / "server.json").write_text("[]")
    impls = ["kernel", "stack-v1"]
    results = [
        _cell("transfer", "kernel", "kernel", "pass", figures={"goodput_MBps": 20.5}),
        _cell("transfer", "kernel", "stack-v1", "pass", figures={"goodput_MBps": 8.0}),
        _cell("transfer", "stack-v1", "kernel", "fail", detail=HOSTILE,
              figures={"goodput_MBps": 3.0, "mptcp": {"client": True}}, artifacts=[str(kept)]),
        _cell("transfer", "stack-v1", "stack-v1", "pass", figures={"goodput_MBps": 11.0}),
        *[_cell("failover", c, s, "n/a", detail="not part of --quick") for c in impls
          for s in impls],
    ]  # fmt: skip
    output = tmp_path / "interop.html"
    text = html_report.interop_page(
        results, impls, _page("8 cells"), output, cell_text=matrix.cell_text,
        descriptions={"transfer": "bytes intact both ways"},
    )  # fmt: skip
    root = parse(text)
    grids = root.find("section", cls="scenario")
    assert [g.attrs["data-key"] for g in grids] == ["transfer", "failover"]
    assert grids[0].attrs["data-verdicts"] == "pass fail" and "bytes intact" in grids[0].text()
    assert [o.attrs["value"] for o in root.one("select", id_="group-filter").find("option")] == [
        "", "transfer", "failover"]  # fmt: skip
    assert [b.attrs["value"] for b in root.find("input", cls="verdict-filter")] == [
        "pass", "fail", "n/a"]  # fmt: skip
    rows = grids[0].one("table", cls="grid").child("tbody").find("tr")
    assert [r.one("th").text() for r in rows] == ["kernel →", "stack-v1 →"]
    texts = [[td.text() for td in r.find("td")] for r in rows]
    assert texts == [["pass 20.5 MB/s", "pass 8.0 MB/s"], ["fail 3.0 MB/s", "pass 11.0 MB/s"]]
    button = grids[0].one("button", cls="toggle")
    detail = grids[0].one("div", id_=button.attrs["aria-controls"])
    assert "hidden" in detail.attrs and detail.one(cls="detail-text").text() == HOSTILE
    assert '{"client": true}' in detail.one("table", cls="counters").text()
    hrefs = [a.attrs["href"] for a in detail.find("a")]
    assert hrefs == [
        "interop-artifacts/transfer.stack-v1.kernel",
        "interop-artifacts/transfer.stack-v1.kernel/client-eth0.pcap",
        "interop-artifacts/transfer.stack-v1.kernel/server.json",
    ]
    assert all((output.parent / unquote(h)).exists() for h in hrefs)
    assert not [(n.tag, k) for n in root.walk() for k in n.attrs if k.startswith("on")]
    assert HOSTILE not in text
    assert not grids[1].find("button")  # n/a cells have nothing to open


# -- list --json --


def test_list_json_prints_the_catalogue(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--json"]) == 0
    out, err = capsys.readouterr()
    entries = json.loads(out)  # nothing but JSON on stdout
    cases = catalogue()
    assert [e["id"] for e in entries] == [c.id for c in cases]
    assert err.startswith(f"{len(cases)} cases in ")
    for entry, case in zip(entries, cases, strict=True):
        assert set(entry) >= {"id", "area", "title", "rfc", "section", "citations", "level",
                              "versions", "role", "expected", "topology"}  # fmt: skip
        assert entry["area"] == case.area and entry["section"] == case.section
        assert entry["level"] in ("MUST", "SHOULD", "MAY")
        assert entry["versions"] and set(entry["versions"]) <= {0, 1}
        assert entry["role"] in ("listener", "initiator")
        assert all(re.fullmatch(r"RFC (6824|8684) §([A-Z]\.)?[\d.]+", c)  # B.1: an appendix
                   for c in entry["citations"])  # fmt: skip
    v0_and_v1 = next(e for e in entries if e["versions"] == [0, 1])
    assert len(v0_and_v1["citations"]) in (1, 2)


def test_list_json_to_a_file_and_with_a_selection(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "catalogue.json"
    assert main(["list", "-k", "mp_join", "--json", str(path)]) == 0
    entries = json.loads(path.read_text())
    assert entries and all("mp_join" in e["id"] or e["area"] == "mp_join" for e in entries)


# -- where artefacts go --


def test_artefacts_default_to_the_current_directory_never_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    package = Path(conformance.__file__).resolve().parent
    for default in (
        runner.DEFAULT_ARTIFACTS,
        _parser().parse_args(["run"]).pcap_dir,
        _parser().parse_args(["interop"]).artifacts,
    ):
        where = default.resolve()
        assert not default.is_absolute() and where.parent == tmp_path, default
        assert package not in where.parents
    assert Path("conformance-artifacts") == runner.DEFAULT_ARTIFACTS
    assert _parser().parse_args(["run", "--pcap-dir", "x"]).pcap_dir == Path("x")


# -- a small real run --

CASE = "mp_capable.unassigned_flags_ignored"  # the kernel deviates (docs/conformance.md)


@pytest.mark.netns
@pytest.mark.kernel
def test_a_real_run_writes_its_page_and_its_artefacts_under_the_current_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert baseline.load()["kernel"][CASE] == "deviates", "pick a case the kernel deviates on"
    monkeypatch.chdir(tmp_path)
    args = ["run", "--iut", "stack-v1,kernel", "-k", CASE, "--html", "out/report.html",
            "--json", "r.json", "-q"]  # fmt: skip
    assert main(args) == 0
    results = {r["iut"]: r for r in json.loads((tmp_path / "r.json").read_text())["results"]}
    assert results["kernel"]["verdict"] == "deviates", results
    pcap = tmp_path / "conformance-artifacts" / f"kernel.{CASE}.pcap"
    assert results["kernel"]["artifacts"] == [
        os.path.join("conformance-artifacts", f"kernel.{CASE}.pcap"),
        os.path.join("conformance-artifacts", f"kernel.{CASE}.ladder.txt"),
    ]
    assert pcap.read_bytes()[:4] == bytes.fromhex("d4c3b2a1")
    root = parse((tmp_path / "out" / "report.html").read_text())
    row = root.one("tr", cls="item", data_key=CASE)
    verdicts = {c.attrs["data-iut"]: c.attrs["data-verdict"] for c in row.find("td", cls="cell")}
    assert verdicts == {"stack-v1": results["stack-v1"]["verdict"], "kernel": "deviates"}
    detail = root.one("tr", id_=row.one("button", cls="toggle").attrs["aria-controls"])
    assert detail.one(cls="detail-text").text() == results["kernel"]["detail"]
    assert len(detail.one("table", cls="ladder").find("tr", cls="arrow")) >= 2
    href = detail.one("a", cls="artifact-pcap").attrs["href"]
    assert (tmp_path / "out" / unquote(href)).resolve() == pcap.resolve()
    env = root.one("table", id_="iut-environment")
    assert "Linux kernel MPTCP" in env.text() and "mptcp-lab userspace stack" in env.text()


@pytest.mark.netns
@pytest.mark.kernel
def test_keep_all_artifacts_writes_the_ladders_of_conforming_runs_and_opens_their_cells(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = "dss.data_ack_advances"
    assert baseline.load()["kernel"][case] == "conforms", "pick a case the kernel conforms on"
    monkeypatch.chdir(tmp_path)
    assert main(["run", "--iut", "kernel", "-k", case, "--html", "r.html", "-q"]) == 0
    assert not (tmp_path / "conformance-artifacts").exists()  # by default: failures only
    args = ["run", "--iut", "kernel", "-k", case, "--keep-all-artifacts", "--html", "r.html",
            "-q"]  # fmt: skip
    assert main(args) == 0
    ladder = tmp_path / "conformance-artifacts" / f"kernel.{case}.ladder.txt"
    assert "tester ← IUT" in ladder.read_text()
    root = parse((tmp_path / "r.html").read_text())
    row = root.one("tr", cls="item", data_key=case)
    assert row.one("td", cls="cell").attrs["data-verdict"] == "conforms"
    detail = root.one("tr", id_=row.one("button", cls="toggle").attrs["aria-controls"])
    assert len(detail.one("table", cls="ladder").find("tr", cls="arrow")) >= 4
