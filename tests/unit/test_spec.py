"""The spec builder: pure functions, checked with properties (hypothesis) and against the Rust
planner, which must accept every spec the builder can produce."""

from __future__ import annotations

import json
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import pyrt
from pyrt import _core
from pyrt.config.sizes import parse_size
from pyrt.oci import spec

names = st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=12)
values = st.text(alphabet=string.printable.replace("\x0b", "").replace("\x0c", ""), max_size=20)
caps = st.sampled_from(spec.ALL_CAPABILITIES)
cap_spellings = caps.flatmap(lambda c: st.sampled_from([c, c[4:], c.lower(), c[4:].lower()]))
abs_paths = st.lists(
    st.text(alphabet=string.ascii_lowercase + "-_", min_size=1, max_size=8), min_size=1, max_size=4
).map(lambda parts: "/" + "/".join(parts))


@given(st.lists(st.dictionaries(names, values, max_size=5), max_size=4))
def test_merge_env_later_layers_win(layers: list[dict[str, str]]) -> None:
    env = spec.merge_env(*layers)
    as_dict = dict(kv.split("=", 1) for kv in env)
    expected: dict[str, str] = {}
    for layer in layers:
        expected.update(layer)
    assert as_dict == expected
    assert len(env) == len(as_dict)  # no duplicates


def test_merge_env_rejects_bad_names() -> None:
    for bad in ("", "A=B", "A\0"):
        with pytest.raises(ValueError):
            spec.merge_env({bad: "x"})


@given(st.lists(cap_spellings, max_size=6), st.lists(cap_spellings, max_size=6), st.booleans())
def test_capability_set(add: list[str], drop: list[str], privileged: bool) -> None:
    result = set(spec.capability_set(add, drop, privileged))
    norm_add = {spec.normalize_capability(c) for c in add}
    norm_drop = {spec.normalize_capability(c) for c in drop}
    assert norm_add <= result  # adds win over drops, as Docker applies drop then add
    base = set(spec.ALL_CAPABILITIES if privileged else spec.DEFAULT_CAPABILITIES)
    assert result == (base - norm_drop) | norm_add


def test_capability_all_keywords() -> None:
    assert spec.capability_set(cap_drop=["ALL"]) == []
    assert spec.capability_set(cap_drop=["all"], cap_add=["net_raw"]) == ["CAP_NET_RAW"]
    assert len(spec.capability_set(cap_add=["ALL"])) == len(spec.ALL_CAPABILITIES)


@given(st.integers(min_value=0, max_value=1 << 50))
def test_sizes_ints(n: int) -> None:
    assert parse_size(n) == n


@given(st.integers(min_value=0, max_value=1 << 20), st.sampled_from(["k", "m", "g", "K", "M"]))
def test_sizes_with_units(n: int, unit: str) -> None:
    mult = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit.lower()]
    assert parse_size(f"{n}{unit}") == n * mult
    assert parse_size(f"{n}{unit}b") == n * mult


def test_sizes_are_exact_past_a_float() -> None:
    assert parse_size("9" * 400) == int("9" * 400)
    assert parse_size("9" * 30 + "k") == int("9" * 30) << 10
    assert parse_size("1.5g") == 3 << 29


@pytest.mark.parametrize("bad", ["", "-1", "1x", "lots", -5, True, 1.5])
def test_bad_sizes(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_size(bad)  # type: ignore[arg-type]


container_specs = st.builds(
    spec.ContainerSpec,
    root=st.one_of(
        st.builds(spec.RootSpec, path=abs_paths, readonly=st.booleans()),
        st.builds(
            spec.RootSpec,
            path=abs_paths,
            lower=st.lists(abs_paths, min_size=1, max_size=3).map(tuple),
            upper=abs_paths,
            work=abs_paths,
        ),
        st.builds(spec.RootSpec, path=abs_paths, readonly=st.just(True), bind=st.just("/")),
    ),
    process=st.builds(
        spec.ProcessSpec,
        args=st.lists(values.filter(bool), min_size=1, max_size=4),
        env=st.lists(st.tuples(names, values).map("=".join), max_size=4),
        cwd=abs_paths,
        uid=st.integers(0, 65535),
        gid=st.integers(0, 65535),
        additional_gids=st.lists(st.integers(0, 65535), max_size=3),
        capabilities=st.lists(caps, max_size=5, unique=True),
        no_new_privileges=st.booleans(),
    ),
    hostname=st.one_of(st.none(), names),
    network=st.sampled_from(spec.NETWORK_MODES),
    mounts=st.lists(
        st.one_of(
            st.builds(pyrt.Bind, source=abs_paths, target=abs_paths, readonly=st.booleans()),
            st.builds(
                pyrt.Tmpfs, target=abs_paths, size=st.one_of(st.none(), st.integers(1, 1 << 30))
            ),
        ).map(lambda m: m.to_spec()),
        max_size=4,
    ),
)


@settings(max_examples=200)
@given(container_specs)
def test_every_built_spec_is_accepted_by_the_core(c: spec.ContainerSpec) -> None:
    doc = spec.build(c)
    plan = json.loads(_core.plan(json.dumps(doc)))
    p = plan["process"]
    assert p["args"] == list(c.process.args)
    assert p["cwd"] == c.process.cwd
    assert p["uid"] == c.process.uid and p["gid"] == c.process.gid
    assert plan["loopback"] == (c.network == "none")
    assert plan["hostname"] == (c.hostname or None)
    # The user's mounts come after the defaults, in order.
    user = [m["destination"] for m in plan["mounts"][len(spec.default_mounts()) :]]
    assert user == [m["destination"].rstrip("/") or "/" for m in c.mounts]
    caps_bits = p["capabilities"]["bounding"]
    assert bin(caps_bits).count("1") == len(set(c.process.capabilities))
    if c.process.uid != 0:
        assert p["capabilities"]["effective"] == 0


def test_non_root_gets_no_effective_caps() -> None:
    d = spec.process_dict(spec.ProcessSpec(args=["x"], uid=1000))
    assert d["capabilities"]["effective"] == [] and d["capabilities"]["bounding"]


def test_rejects() -> None:
    with pytest.raises(ValueError):
        spec.process_dict(spec.ProcessSpec(args=[]))
    with pytest.raises(ValueError):
        spec.process_dict(spec.ProcessSpec(args=["x"], cwd="rel"))
    with pytest.raises(ValueError):
        spec.build(spec.ContainerSpec(root=spec.RootSpec("/r"), process=spec.ProcessSpec(["x"]),
                                      network="bridge"))  # fmt: skip
    with pytest.raises(ValueError):
        spec.build(spec.ContainerSpec(root=spec.RootSpec("/r", lower=("/a",)),
                                      process=spec.ProcessSpec(["x"])))  # fmt: skip


def test_core_refuses_bad_specs_with_a_spawn_error() -> None:
    with pytest.raises(pyrt.SpawnError) as ei:
        _core.plan("{not json")
    assert ei.value.stage == "spec"
    doc = spec.build(spec.ContainerSpec(root=spec.RootSpec("/r"), process=spec.ProcessSpec(["x"])))
    doc["linux"]["namespaces"] = [{"type": "pid"}]
    with pytest.raises(pyrt.SpawnError, match="mount namespace"):
        _core.plan(json.dumps(doc))
