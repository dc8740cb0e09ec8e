"""Who a process runs as: "uid", "uid:gid", "name" or "name:group" resolved against an
/etc/passwd and /etc/group (an image's, for ``user=``; a running container's own, for
`pyrt exec -u`), by Docker's rules."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: The largest id the kernel takes (2^32 - 1 means "no id").
MAX_ID = 2**32 - 2


@dataclass(frozen=True)
class UserIds:
    uid: int
    gid: int
    additional_gids: tuple[int, ...]
    home: str


def parse_colon_file(data: Optional[bytes]) -> list[list[str]]:
    """The entries of a passwd or group file, each split at its colons."""
    if not data:
        return []
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            out.append(line.split(":"))
    return out


def resolve(user: Optional[str], passwd: Optional[bytes], group: Optional[bytes]) -> UserIds:
    """``user`` against these files' contents (None: no such file). A numeric uid need not
    exist (its gid is then 0); a name must. The additional groups are those naming the user;
    HOME is its passwd entry's, else "/" ("/root" for an unlisted root)."""
    entries = parse_colon_file(passwd)
    groups = parse_colon_file(group)
    spec = (user or "").strip() or "0"
    uname, _, gname = spec.partition(":")
    entry = None
    if uname.isdigit():
        uid = int(uname)
        entry = next((e for e in entries if len(e) > 3 and e[2] == uname), None)
    else:
        entry = next((e for e in entries if e[0] == uname and len(e) > 3), None)
        if entry is None:
            raise ValueError(f"unable to find user {uname}: no matching entries in passwd file")
        uid = int(entry[2])
    gid = int(entry[3]) if entry and entry[3].isdigit() else 0
    if gname:
        if gname.isdigit():
            gid = int(gname)
        else:
            g = next((e for e in groups if e[0] == gname and len(e) > 2), None)
            if g is None:
                raise ValueError(f"unable to find group {gname}: no matching entries in group file")
            gid = int(g[2])
    name = entry[0] if entry else None
    member_of = {
        int(g[2])
        for g in groups
        if name and len(g) > 3 and g[2].isdigit() and name in g[3].split(",")
    }
    home = entry[5] if entry and len(entry) > 5 and entry[5] else "/"
    if not entry and uid == 0:
        home = "/root"
    for what, n in (("uid", uid), ("gid", gid)):
        if n > MAX_ID:
            raise ValueError(f"user {spec!r}: {what} {n} is out of range (at most {MAX_ID})")
    return UserIds(uid, gid, tuple(sorted(member_of - {gid})), home)
