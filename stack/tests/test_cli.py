from __future__ import annotations

import ipaddress

import pytest

from stack.cli import build_parser, endpoints_of, parse_interface


def test_serve_flags_parse() -> None:
    args = build_parser().parse_args(
        [
            "serve", "--netns", "ns1", "--port", "5000", "--version", "0",
            "--interface", "eth0=192.0.2.1/24,gw=192.0.2.254",
            "--interface", "eth1=198.51.100.1/24,subflow,backup",
            "--limits", "4,2", "--scheduler", "redundant",
        ]
    )  # fmt: skip
    assert args.port == 5000 and args.version == 0
    assert args.limits.subflows == 4 and args.limits.add_addr_accepted == 2
    first, second = endpoints_of(args.interface)
    assert first.id == 1 and first.address == ipaddress.ip_address("192.0.2.1")
    assert second.subflow and second.backup and not second.signal
    assert args.interface[0].config.gateway == ipaddress.ip_address("192.0.2.254")


def test_connect_needs_a_destination() -> None:
    args = build_parser().parse_args(
        ["connect", "--interface", "eth0=2001:db8:1::1/64", "--to", "[2001:db8:1::2]:80"]
    )
    assert args.to == (ipaddress.ip_address("2001:db8:1::2"), 80)
    assert args.mode == "source"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve", "--interface", "eth0=192.0.2.1/24,turbo", "--port", "1"],
         "unknown flag(s) turbo"),
        (["serve", "--interface", "eth0=192.0.2.1", "--port", "1"], "needs a /prefix length"),
        (["serve", "--interface", "eth0=192.0.2.1/24", "--port", "70000"], "not in 1..65535"),
        (["serve", "--interface", "eth0=192.0.2.1/24", "--port", "1", "--limits", "9,1"],
         "limit subflows=9"),
        (["connect", "--interface", "eth0=192.0.2.1/24", "--to", "192.0.2.2"],
         "expected ADDR:PORT"),
        (["serve", "--interface", "eth0=192.0.2.1/24", "--port", "1", "--version", "2"],
         "invalid choice"),
    ],
)  # fmt: skip
def test_bad_flags_get_a_clear_error(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_interface_flags_are_kept() -> None:
    spec = parse_interface("eth0=192.0.2.1/24,signal,fullmesh")
    assert spec.flags == {"signal", "fullmesh"}
