from __future__ import annotations

import ipaddress
import re

import pytest

from stack.cli import CliError, build_parser, endpoints_of, parse_interface


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


def test_endpoint_id_and_port() -> None:
    args = build_parser().parse_args(
        [
            "serve", "--port", "80",
            "--interface", "eth0=192.0.2.1/24",
            "--interface", "eth1=198.51.100.1/24,signal,id=7,port=6000",
            "--interface", "eth2=203.0.113.1/24,subflow,backup",
            "--checksum", "--add-addr-timeout", "1.5", "--control", "stdin",
        ]
    )  # fmt: skip
    first, second, third = endpoints_of(args.interface)
    # an explicit ID is kept; the others take the lowest free IDs in declaration order
    assert (first.id, second.id, third.id) == (1, 7, 2)
    assert second.port == 6000 and second.signal and first.port is None
    assert third.backup and third.subflow
    assert args.checksum and args.add_addr_timeout == 1.5 and args.control == "stdin"


def test_explicit_ids_are_skipped_by_automatic_ones() -> None:
    specs = [parse_interface("eth0=192.0.2.1/24"), parse_interface("eth1=198.51.100.1/24,id=1")]
    assert [e.id for e in endpoints_of(specs)] == [2, 1]


def test_defaults_keep_normal_use_unchanged() -> None:
    args = build_parser().parse_args(["serve", "--port", "80", "--interface", "eth0=192.0.2.1/24"])
    assert args.control is None and args.add_addr_timeout is None and not args.checksum
    assert endpoints_of(args.interface)[0].id == 1


@pytest.mark.parametrize(
    ("interface", "message"),
    [
        ("eth0=192.0.2.1/24,id=0", "id=0 not in 1..255"),
        ("eth0=192.0.2.1/24,id=256", "id=256 not in 1..255"),
        ("eth0=192.0.2.1/24,id=x", "id='x' is not a number"),
        ("eth0=192.0.2.1/24,signal,port=0", "port=0 not in 1..65535"),
        ("eth0=192.0.2.1/24,signal,port=70000", "port=70000 not in 1..65535"),
        ("eth0=192.0.2.1/24,subflow,port=6000", "port=6000 needs the signal flag"),
        ("eth0=192.0.2.1/24,mtu=1400", "unknown flag(s) mtu="),
    ],
)
def test_bad_endpoint_fields_are_named(interface: str, message: str) -> None:
    with pytest.raises(CliError, match=re.escape(message)):
        parse_interface(interface)


def test_an_id_given_twice_is_named() -> None:
    specs = [
        parse_interface("eth0=192.0.2.1/24,id=4"),
        parse_interface("eth1=198.51.100.1/24,id=4"),
    ]
    with pytest.raises(CliError, match=re.escape("address ID(s) [4] given to more than one")):
        endpoints_of(specs)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--add-addr-timeout", "soon"], "seconds 'soon' is not a number"),
        (["--add-addr-timeout", "-1"], "seconds -1.0 not in 0..3600"),
        (["--control", "tcp"], "invalid choice: 'tcp'"),
    ],
)
def test_bad_sysctl_flags_are_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--port", "1", "--interface", "eth0=192.0.2.1/24",
                                   *argv])  # fmt: skip
    assert message in capsys.readouterr().err


def test_bind_and_blackhole_fallback_flags() -> None:
    args = build_parser().parse_args(
        ["serve", "--interface", "eth0=192.0.2.1/24", "--port", "80", "--bind", "192.0.2.1"]
    )
    assert args.bind == "192.0.2.1"
    assert build_parser().parse_args(
        ["serve", "--interface", "eth0=192.0.2.1/24", "--port", "80"]
    ).bind is None  # fmt: skip
    connect = ["connect", "--interface", "eth0=192.0.2.1/24", "--to", "192.0.2.2:80"]
    assert build_parser().parse_args(connect).syn_retrans_before_fallback == 2  # Linux's
    assert build_parser().parse_args(
        [*connect, "--syn-retrans-before-fallback", "0"]
    ).syn_retrans_before_fallback == 0  # fmt: skip
    assert build_parser().parse_args(connect).syn_retries == 6  # tcp_syn_retries' default
    assert build_parser().parse_args([*connect, "--syn-retries", "1"]).syn_retries == 1
