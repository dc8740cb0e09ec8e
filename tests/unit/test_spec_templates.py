"""A container's spec from a template (``assemble.container_spec_sent``) is exactly the one
assembled from scratch (``container_spec``), byte for byte as the core is sent it, whatever
the options, the id and the command: checked with properties (hypothesis)."""

from __future__ import annotations

import dataclasses
import json
import secrets
import string

from hypothesis import given, settings
from hypothesis import strategies as st

import pyrt
from pyrt.config.options import ContainerOptions
from pyrt.image import ImageConfig
from pyrt.oci import assemble, spec

names = st.text(alphabet=string.ascii_letters + "_", min_size=1, max_size=12)
# Any text a value can hold (not NUL), quotes, backslashes and non-ASCII included: the
# template's replacements work on the JSON text.
values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\0"),
    max_size=20,
)
ids = st.builds(lambda: secrets.token_hex(16))
abs_paths = st.lists(
    st.text(alphabet=string.ascii_lowercase + "-_", min_size=1, max_size=8), min_size=1, max_size=4
).map(lambda parts: "/" + "/".join(parts))
options = st.builds(
    ContainerOptions,
    env=st.dictionaries(st.one_of(names, st.just("HOSTNAME")), values, max_size=4),
    workdir=st.one_of(st.none(), abs_paths),
    hostname=st.one_of(st.none(), st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=9)),
    mounts=st.lists(
        st.one_of(
            st.builds(pyrt.Bind, source=abs_paths, target=abs_paths, readonly=st.booleans()),
            st.builds(pyrt.Tmpfs, target=abs_paths),
        ),
        max_size=3,
    ).map(tuple),
    readonly_rootfs=st.booleans(),
    cap_drop=st.lists(st.sampled_from(["KILL", "CHOWN", "NET_RAW"]), max_size=2).map(tuple),
    privileged=st.booleans(),
    init=st.booleans(),
    tty=st.booleans(),
)
commands = st.lists(values, min_size=1, max_size=4)


def _image() -> pyrt.Image:
    """An image of its own per test (the templates are kept per image). Its user database is
    the one it lacks: root, with HOME /root."""
    return pyrt.Image("oci", ("/nonexistent-lower",), ImageConfig(env={"FROM_IMAGE": "1"}))


def _inputs(cid: str, cgroup: bool) -> assemble.Placement:
    root = f"/run/pyrt-test/containers/{cid}"
    return assemble.Placement(
        root_dir="/run/pyrt-test/mnt",
        layers=assemble.Layers(lower=("/l1", "/l2"), upper=f"{root}/upper", work=f"{root}/work"),
        limits=spec.Limits(64 << 20, None, None) if cgroup else None,
        cgroup=cgroup,
    )


def _same(image: pyrt.Image, o: ContainerOptions, cid: str, args: list[str], cgroup: bool) -> None:
    at = _inputs(cid, cgroup)
    direct = assemble.container_spec(o, image, cid, args, at)
    made, sent = assemble.container_spec_sent(o, image, cid, args, at)
    assert made == direct
    assert sent == json.dumps(
        assemble.without_seccomp(direct.config) if direct.seccomp_json else direct.config
    )


@settings(max_examples=150, deadline=None)
@given(options, st.lists(st.tuples(ids, commands), min_size=2, max_size=4), st.booleans())
def test_a_template_gives_what_assembling_gives(
    o: ContainerOptions, runs: list[tuple[str, list[str]]], cgroup: bool
) -> None:
    """The first container of a set of inputs makes the template, the others use it: each,
    with its own id and command, gets exactly the spec assembled for it alone."""
    image = _image()
    for cid, args in runs:
        _same(image, o, cid, args, cgroup)
    assert len(assemble._templates[image]) == 1


def test_an_id_in_the_command_or_the_environment_stays_as_given() -> None:
    """A command or a value that holds another container's id (a test passing one to the
    next) is not taken for a placeholder."""
    image = _image()
    first = secrets.token_hex(16)
    _same(image, ContainerOptions(), first, ["true"], False)
    second = secrets.token_hex(16)
    o = ContainerOptions(env={"PREVIOUS": first, "SHORT": first[:12]})
    _same(image, o, second, ["echo", first, first[:12], second], False)
    _same(image, ContainerOptions(), second, ["echo", first, first[:12], second], False)


def test_a_new_image_config_makes_a_new_template() -> None:
    image = _image()
    cid = secrets.token_hex(16)
    made, _ = assemble.container_spec_sent(
        ContainerOptions(), image, cid, ["x"], _inputs(cid, False)
    )
    assert "FROM_IMAGE=1" in made.process.env
    image.config = ImageConfig(env={"FROM_IMAGE": "2"})
    made, sent = assemble.container_spec_sent(
        ContainerOptions(), image, cid, ["x"], _inputs(cid, False)
    )
    assert "FROM_IMAGE=2" in made.process.env and "FROM_IMAGE=2" in sent


def test_the_template_key_holds_every_option_that_changes_the_spec() -> None:
    """A new option must be either in the key or known not to change the spec: a template
    made without it in the key would be handed to containers it does not describe."""
    fields = {f.name for f in dataclasses.fields(ContainerOptions)}
    assert set(assemble.KEYED_OPTIONS) | set(assemble.UNKEYED_OPTIONS) == fields
    assert not set(assemble.KEYED_OPTIONS) & set(assemble.UNKEYED_OPTIONS)
    image = _image()
    cid = secrets.token_hex(16)
    base = assemble.container_spec(ContainerOptions(), image, cid, ["x"], _inputs(cid, False))
    for name in assemble.UNKEYED_OPTIONS:
        value = {"name": "n", "aliases": ("a",), "limits": spec.Limits(1 << 30, None, None),
                 "disk": 1 << 20, "output_limit": 10}[name]  # fmt: skip
        o = dataclasses.replace(ContainerOptions(), **{name: value})
        assert assemble.container_spec(o, image, cid, ["x"], _inputs(cid, False)) == base, name


def test_containers_that_differ_in_one_option_do_not_share_a_template() -> None:
    """Each keyed option, changed alone after a template was made without it: the spec is the
    one assembled for the change (a key that missed it would hand out the first one's)."""
    changed = {"env": {"A": "1"}, "workdir": "/w", "user": "1:2", "hostname": "h",
               "mounts": (pyrt.Tmpfs("/t"),), "readonly_rootfs": True, "network": "host",
               "cap_add": ("NET_ADMIN",), "cap_drop": ("KILL",), "privileged": True,
               "init": True, "tty": True}  # fmt: skip
    assert set(changed) == set(assemble.KEYED_OPTIONS)
    for name, value in changed.items():
        image = _image()
        first = secrets.token_hex(16)
        _same(image, ContainerOptions(), first, ["x"], False)
        o = dataclasses.replace(ContainerOptions(), **{name: value})
        _same(image, o, secrets.token_hex(16), ["x"], False)
        assert len(assemble._templates[image]) == 2, name
    for cgroup in (False, True):  # the other inputs: the cgroup and its limits
        image = _image()
        _same(image, ContainerOptions(), secrets.token_hex(16), ["x"], not cgroup)
        _same(image, ContainerOptions(), secrets.token_hex(16), ["x"], cgroup)
